import Foundation
import PalisadeCore
@testable import PalisadeServer
import PalisadeScreening
import PalisadeTestSupport
import Testing

/// Stage 6 on its own: the statistics it rests on, OOD scores, drift, the extraction monitor on real data, and the
/// sample files `bundle stats` reads.
@Suite struct ScreeningTests {
  static let fixtures = "\(repositoryRoot)/Tests/Fixtures"

  /// W of scipy.stats.shapiro (scipy 1.17) for the same samples.
  @Test func shapiroWilkMatchesScipy() throws {
    let cases: [([Double], Double)] = [
      ((1...20).map(Double.init), 0.9603751832429884),
      ((1...50).map { Double($0 * $0) }, 0.898124799573951),
      ([1, 2, 3, 4, 5, 100], 0.5313019459001229),
      ([2.1, 3.4, 1.9, 5.6, 4.4, 3.3, 2.8, 4.0, 3.9, 3.1, 2.5], 0.9648928961853555),
      ((0..<100).map { exp(Double($0) / 10) }, 0.5667361184932098),
    ]
    for (sample, expected) in cases {
      let w = try #require(Statistics.shapiroWilkW(sample))
      #expect(abs(w - expected) < 2e-4, "n=\(sample.count): \(w) vs \(expected)")
    }
    #expect(Statistics.shapiroWilkW([1, 1, 1, 1]) == nil, "a constant sample has no W")
    #expect(Statistics.shapiroWilkW([1, 2]) == nil)
  }

  @Test func mahalanobisWithDiagonalAndFullCovariance() throws {
    let diag = OODScorer(ScreeningProfile(references: ["x": .init(mean: [0, 0], std: [1, 2])]))
    let s = try #require(diag.score([try Tensor(name: "x", shape: [1, 2], values: [Float(3), 4])]))
    #expect(abs(s.mahalanobis - (9.0 + 4.0).squareRoot()) < 1e-9)
    #expect(abs(s.maxZ - 3) < 1e-9)
    // Strongly correlated features: a point along the correlation is near, one across it is far.
    let full = OODScorer(
      ScreeningProfile(references: ["x": .init(mean: [0, 0], std: [1, 1], covariance: [[1, 0.9], [0.9, 1]])]))
    let along = try #require(full.score([try Tensor(name: "x", shape: [1, 2], values: [Float(1), 1])]))
    let across = try #require(full.score([try Tensor(name: "x", shape: [1, 2], values: [Float(1), -1])]))
    // (The diagonal carries the variance floor, 1e-3 × the mean variance.)
    #expect(abs(along.mahalanobis - (2 / 1.901).squareRoot()) < 1e-6)
    #expect(abs(across.mahalanobis - (2 / 0.101).squareRoot()) < 1e-6)
    // The worst row decides; unscreened inputs are ignored.
    let batch = try #require(
      diag.score([
        try Tensor(name: "x", shape: [2, 2], values: [Float(0), 0, 0, 10]),
        try Tensor(name: "other", shape: [1, 1], values: [Float(1e9)]),
      ]))
    #expect(abs(batch.mahalanobis - 5) < 1e-9)
  }

  @Test func driftIsLowInDistributionAndHighAfterAShift() throws {
    let profile = ScreeningProfile(references: ["x": .init(mean: [0, 5], std: [1, 2])])
    let monitor = DriftMonitor(profile: profile, window: 2000) { _, _ in }
    var rng = SplitMix64(seed: 7)
    func normal() -> Double {
      let u1 = Double(rng.next() >> 11) / Double(1 << 53) + 1e-12
      let u2 = Double(rng.next() >> 11) / Double(1 << 53)
      return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
    }
    var values: [Float] = []
    for _ in 0..<2000 { values += [Float(normal()), Float(5 + 2 * normal())] }
    monitor.observe([try Tensor(name: "x", shape: [2000, 2], values: values)])
    let stable = try #require(monitor.current("x"))
    #expect(stable.allSatisfy { $0 < 0.05 }, "\(stable)")
    // Feature 1 moves by one standard deviation; feature 0 stays.
    values = []
    for _ in 0..<2000 { values += [Float(normal()), Float(7 + 2 * normal())] }
    monitor.observe([try Tensor(name: "x", shape: [2000, 2], values: values)])
    let shifted = try #require(monitor.current("x"))
    #expect(shifted[0] < 0.05 && shifted[1] > 0.25, "\(shifted)")
  }

  /// The reference sample and the natural stream are the scikit-learn digits (Tests/Fixtures/make_digits_samples.py).
  func digits() throws -> (reference: ReferenceStatisticsBuilder.Result, stream: ReferenceStatisticsBuilder.Sample) {
    let sample = try SampleFile.read(path: "\(Self.fixtures)/digits_reference.npy")
    #expect(sample.rows == 1000 && sample.features == 64)
    let stream = try SampleFile.read(path: "\(Self.fixtures)/digits_stream.csv")
    #expect(stream.rows == 797 && stream.features == 64)
    return (try ReferenceStatisticsBuilder().build(sample, covariance: .diagonal), stream)
  }

  func monitor(_ reference: ReferenceStatisticsBuilder.Result) -> (ExtractionMonitor, OODScorer, Double) {
    let profile = ScreeningProfile(references: ["input": reference.reference], threshold: reference.suggestedThreshold)
    return (
      ExtractionMonitor(input: "input", features: 64, settings: .defaults), OODScorer(profile),
      reference.suggestedThreshold
    )
  }

  func query(_ row: [Double]) throws -> [Tensor] {
    [try Tensor(name: "input", shape: [1, Int64(row.count)], values: row.map { Float($0) })]
  }

  @Test func aNaturalQueryStreamRaisesNoAlarm() throws {
    let (reference, stream) = try digits()
    let (monitor, scorer, threshold) = monitor(reference)
    var flagged = 0
    for r in 0..<stream.rows {
      let q = try query(Array(stream.values[(r * 64)..<(r * 64 + 64)]))
      let ood = (scorer.score(q)?.mahalanobis ?? 0) > threshold
      if ood { flagged += 1 }
      #expect(monitor.observe(principal: "spiffe://t/natural", inputs: q, outOfDistribution: ood) == nil, "row \(r)")
    }
    #expect(flagged < stream.rows / 50, "natural rows flagged out of distribution: \(flagged)")
  }

  @Test func randomProbingOfTheInputSpaceRaisesTheAlarm() throws {
    let (reference, _) = try digits()
    let (monitor, scorer, threshold) = monitor(reference)
    var rng = SplitMix64(seed: 42)
    var alarm: ExtractionMonitor.Alarm? = nil
    var sent = 0
    while alarm == nil && sent < 500 {
      let q = try query((0..<64).map { _ in Double(rng.next() % 1000) / 1000 })
      alarm = monitor.observe(
        principal: "spiffe://t/prober", inputs: q, outOfDistribution: (scorer.score(q)?.mahalanobis ?? 0) > threshold)
      sent += 1
    }
    #expect(alarm?.detector == .oodShare, "after \(sent) queries")
    #expect(sent <= 100)
  }

  /// JbDA-style synthesis (seeds from the training data plus small perturbations) stays in distribution; PRADA's
  /// distance test catches it.
  @Test func seedPerturbationSynthesisRaisesThePradaAlarm() throws {
    let (reference, stream) = try digits()
    let (monitor, scorer, threshold) = monitor(reference)
    var rng = SplitMix64(seed: 3)
    var alarm: ExtractionMonitor.Alarm? = nil
    var sent = 0
    outer: for seedRow in stride(from: 0, to: 400, by: 40) {
      let seed = Array(stream.values[(seedRow * 64)..<(seedRow * 64 + 64)])
      for i in 0..<20 {
        let row = i == 0 ? seed : seed.map { min(1, max(0, $0 + (Double(rng.next() % 1000) / 1000 - 0.5) * 0.1)) }
        let q = try query(row)
        alarm = monitor.observe(
          principal: "spiffe://t/synth", inputs: q, outOfDistribution: (scorer.score(q)?.mahalanobis ?? 0) > threshold)
        sent += 1
        if alarm != nil { break outer }
      }
    }
    #expect(alarm?.detector == .prada, "after \(sent) queries")
    // Streams are per principal: another caller's state is untouched.
    #expect(
      monitor.observe(
        principal: "spiffe://t/other", inputs: try query(Array(repeating: 0.5, count: 64)), outOfDistribution: false)
        == nil)
  }

  @Test func statisticsFromNpyAndCsvAgree() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("stats-\(UUID())").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    // numpy writes the .npy (float64, 3-D: rows × 2 × 2 flattened to 4 features); we write the same as CSV.
    let r = try runPython(
      "import numpy as np; a=np.arange(24,dtype=np.float64).reshape(6,2,2)**1.5; np.save('\(dir)/s.npy', a); "
        + "np.savetxt('\(dir)/s.csv', a.reshape(6,4), delimiter=',', header='a,b,c,d', comments='', fmt='%.17g'); "
        + "print(repr(a.reshape(6,4).mean(0).tolist()), repr(a.reshape(6,4).std(0, ddof=1).tolist()))")
    let npy = try ReferenceStatisticsBuilder().build(try SampleFile.read(path: "\(dir)/s.npy"), covariance: .full)
    let csv = try ReferenceStatisticsBuilder().build(try SampleFile.read(path: "\(dir)/s.csv"), covariance: .full)
    #expect(npy.rows == 6 && csv.rows == 6)
    for (a, b) in zip(npy.reference.mean + npy.reference.std, csv.reference.mean + csv.reference.std) {
      #expect(abs(a - b) < 1e-9 * max(1, abs(a)))
    }
    #expect(r.contains(String(format: "%.6f", npy.reference.mean[1]).prefix(6)))
    #expect(npy.reference.covariance?.count == 4)
  }

  @Test func malformedSampleFilesAreRefusedWithTheReason() throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID())").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    func refusal(_ name: String, _ content: [UInt8]) -> String {
      _ = FileManager.default.createFile(atPath: "\(dir)/\(name)", contents: Data(content))
      do {
        _ = try SampleFile.read(path: "\(dir)/\(name)")
        return "accepted"
      } catch { return error.description }
    }
    #expect(refusal("ragged.csv", Array("1,2\n3\n".utf8)).contains("line 2: 1 columns, earlier rows have 2"))
    #expect(refusal("words.csv", Array("1,2\n3,x\n".utf8)).contains("line 2: not all cells are numbers"))
    #expect(refusal("empty.csv", []).contains("no rows"))
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }"
    var npy: [UInt8] = [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(header.utf8.count), 0] + Array(header.utf8)
    #expect(refusal("short.npy", npy + [0, 0, 0, 0]).contains("data size does not match"))
    npy = [0x93] + Array("NUMPY".utf8) + [1, 0, 200, 0]
    #expect(refusal("truncated.npy", npy).contains("truncated"))
    let complex = "{'descr': '<c8', 'fortran_order': False, 'shape': (1, 1), }"
    #expect(
      refusal(
        "complex.npy",
        [0x93] + Array("NUMPY".utf8) + [1, 0, UInt8(complex.utf8.count), 0] + Array(complex.utf8)
          + Array(repeating: 0, count: 8)
      ).contains("not supported"))
    #expect(throws: SampleFileError.self) {
      try ReferenceStatisticsBuilder().build(.init(rows: 1, features: 2, values: [1, 2]), covariance: .diagonal)
    }
  }

  func runPython(_ code: String) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: InteropTests.python)
    p.arguments = ["-c", code]
    let out = Pipe()
    p.standardOutput = out
    try p.run()
    p.waitUntilExit()
    #expect(p.terminationStatus == 0)
    return String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
  }
}
