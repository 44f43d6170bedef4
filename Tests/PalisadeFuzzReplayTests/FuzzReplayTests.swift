import Foundation
import PalisadeFuzzTargets
import Testing

/// Replays every committed seed (`Fuzz/corpus/<target>/`) and every saved reproducer of a fixed finding
/// (`Fuzz/regressions/<target>/`) through the same bodies libFuzzer runs (`make fuzz`). A regression shows as a
/// crash of the test process; a body never fails by throwing.
@Suite(.serialized) struct FuzzReplayTests {
  static let fuzzDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("Fuzz")

  static func files(_ kind: String, _ target: FuzzTarget) -> [URL] {
    let dir = fuzzDirectory.appendingPathComponent(kind).appendingPathComponent(target.rawValue)
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []
    return names.filter { !$0.hasPrefix(".") }.sorted().map { dir.appendingPathComponent($0) }
  }

  @Test(arguments: FuzzTarget.allCases)
  func replayCorpusAndRegressions(_ target: FuzzTarget) async throws {
    let corpus = Self.files("corpus", target)
    // Every target has seeds: an empty directory would mean the fuzzer starts blind and this test checks nothing.
    #expect(!corpus.isEmpty, "Fuzz/corpus/\(target.rawValue) has no seeds")
    for file in corpus + Self.files("regressions", target) {
      let bytes = try [UInt8](Data(contentsOf: file))
      await target.run(async: bytes)
    }
    FuzzTarget.removeScratch()
  }

  /// Every target has a directory of seeds, and no directory names a target that does not exist.
  @Test func corpusDirectoriesMatchTargets() throws {
    let names = try FileManager.default.contentsOfDirectory(atPath: Self.fuzzDirectory.appendingPathComponent("corpus").path)
    #expect(Set(names.filter { !$0.hasPrefix(".") }) == Set(FuzzTarget.allCases.map(\.rawValue)))
  }
}
