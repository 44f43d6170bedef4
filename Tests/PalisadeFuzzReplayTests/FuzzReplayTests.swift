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

  /// The seeds meant to be valid are (the corpus and the public keys in FuzzKeys.swift were made together).
  @Test func validSeedsAreAccepted() async throws {
    let valid: [FuzzTarget: [String]] = [
      .jwt: ["es256-oauth", "es384-oauth-aud-list", "eddsa-oauth", "eddsa-spiffe-no-iss", "es256-spiffe"],
      .bundleSignature: ["model-sig-key"],
      // A shipped .tar.zst, and a tar the target frames as zstd itself.
      .bundleArchive: ["signed-tar-zst", "signed-tar"],
      .auditCheckpoint: ["size-3", "size-1-cosigned"],
      .tpmEvidence: ["quote-pcr23", "signature-ecdsa-sha256", "ak-public-p256", "ek-public-p256", "event-log"],
      .inferRequest: [
        "digits-typed", "digits-raw", "half-bf16-raw", "text-bytes-raw", "text-bytes-typed", "mixed-typed", "mixed-raw",
      ],
    ]
    for (target, names) in valid {
      for name in names {
        let url = Self.fuzzDirectory.appendingPathComponent("corpus/\(target.rawValue)/\(name)")
        let accepted = await target.accepts(try [UInt8](Data(contentsOf: url)))
        #expect(accepted == true, "\(target.rawValue)/\(name) is refused")
      }
    }
    for name in ["expired", "wrong-binding", "alg-none"] {
      let url = Self.fuzzDirectory.appendingPathComponent("corpus/jwt/\(name)")
      #expect(await FuzzTarget.jwt.accepts(try [UInt8](Data(contentsOf: url))) == false, "jwt/\(name) is accepted")
    }
  }

  /// Every target has a directory of seeds, and no directory names a target that does not exist.
  @Test func corpusDirectoriesMatchTargets() throws {
    let names = try FileManager.default.contentsOfDirectory(
      atPath: Self.fuzzDirectory.appendingPathComponent("corpus").path)
    #expect(Set(names.filter { !$0.hasPrefix(".") }) == Set(FuzzTarget.allCases.map(\.rawValue)))
  }
}
