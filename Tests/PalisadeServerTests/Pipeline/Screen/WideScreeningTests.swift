import Foundation
import Logging
import PalisadeCore
import PalisadeIdentity
import PalisadePolicy
@testable import PalisadeServer
import PalisadeScreening
import PalisadeTestSupport
import Testing

/// The extraction monitor on wide inputs (784 features, projected to 32 dimensions by one GEMM per request): the
/// same verdicts as on the 64-feature digits, one row per request and 32 rows per request. The rows are the
/// scikit-learn digits (Tests/Fixtures) scaled up from 8 x 8 to 28 x 28 pixels (bilinear), so the natural stream
/// is still natural and the attacks are the same attacks.
@Suite struct WideScreeningTests {
  static let fixtures = "\(repositoryRoot)/Tests/Fixtures"

  /// 8 x 8 rows to 28 x 28 rows.
  static func upscale(_ rows: [Double], count: Int) -> [Double] {
    var out = [Double](repeating: 0, count: count * 784)
    for r in 0..<count {
      let src = r * 64
      for y in 0..<28 {
        for x in 0..<28 {
          let fy = min(7, max(0, (Double(y) + 0.5) * 8 / 28 - 0.5))
          let fx = min(7, max(0, (Double(x) + 0.5) * 8 / 28 - 0.5))
          let (y0, x0) = (Int(fy), Int(fx))
          let (y1, x1) = (min(7, y0 + 1), min(7, x0 + 1))
          let (wy, wx) = (fy - Double(y0), fx - Double(x0))
          let top = rows[src + y0 * 8 + x0] * (1 - wx) + rows[src + y0 * 8 + x1] * wx
          let bottom = rows[src + y1 * 8 + x0] * (1 - wx) + rows[src + y1 * 8 + x1] * wx
          out[r * 784 + y * 28 + x] = top * (1 - wy) + bottom * wy
        }
      }
    }
    return out
  }

  struct Setup {
    var monitor: ExtractionMonitor
    var scorer: OODScorer
    var threshold: Double
    var stream: [Double]
    var streamRows: Int
  }

  func setup() throws -> Setup {
    let sample = try SampleFile.read(path: "\(Self.fixtures)/digits_reference.npy")
    let wide = ReferenceStatisticsBuilder.Sample(
      rows: sample.rows, features: 784, values: Self.upscale(sample.values, count: sample.rows))
    let reference = try ReferenceStatisticsBuilder().build(wide, covariance: .diagonal)
    let stream = try SampleFile.read(path: "\(Self.fixtures)/digits_stream.csv")
    let profile = ScreeningProfile(references: ["input": reference.reference], threshold: reference.suggestedThreshold)
    return Setup(
      monitor: ExtractionMonitor(input: "input", features: 784, settings: .defaults), scorer: OODScorer(profile),
      threshold: reference.suggestedThreshold, stream: Self.upscale(stream.values, count: stream.rows),
      streamRows: stream.rows)
  }

  func request(_ rows: ArraySlice<Double>) throws -> [Tensor] {
    [try Tensor(name: "input", shape: [Int64(rows.count / 784), 784], values: rows.map { Float($0) })]
  }

  /// The OOD verdicts the screening stage gives the monitor: one per row.
  func verdicts(_ s: Setup, _ q: [Tensor]) -> ExtractionMonitor.RowVerdicts {
    let rows = s.scorer.score(FloatingInputs(q), rowsOf: "input").rows ?? []
    return .each(rows.map { $0 > s.threshold })
  }

  @Test(arguments: [1, 32]) func aNaturalWideStreamRaisesNoAlarm(rowsPerRequest: Int) throws {
    let s = try setup()
    var r = 0
    while r + rowsPerRequest <= s.streamRows {
      let q = try request(s.stream[(r * 784)..<((r + rowsPerRequest) * 784)])
      #expect(
        s.monitor.observe(principal: "spiffe://t/natural", inputs: q, verdicts: verdicts(s, q)) == nil, "rows \(r)...")
      r += rowsPerRequest
    }
  }

  /// The whole screening stage on natural traffic sent 32 rows per request, with extraction alarms set to
  /// quarantine: no alarm, no quarantine. (When a request's worst row decided for all its rows, a few odd rows
  /// among 797 natural ones marked most of the stream out of distribution and the OOD-share alarm fired.)
  @Test func naturalBatchedTrafficThroughTheScreeningStageIsNotQuarantined() async throws {
    let s = try setup()
    let sample = try SampleFile.read(path: "\(Self.fixtures)/digits_reference.npy")
    let reference = try ReferenceStatisticsBuilder().build(
      .init(rows: sample.rows, features: 784, values: Self.upscale(sample.values, count: sample.rows)),
      covariance: .diagonal)
    let descriptor = ModelDescriptor(
      name: "wide", version: "1", platform: "onnx",
      inputs: [TensorSpec(name: "input", datatype: .fp32, shape: [-1, 784])],
      outputs: [TensorSpec(name: "output", datatype: .fp32, shape: [-1, 10])],
      screening: ScreeningProfile(references: ["input": reference.reference], threshold: reference.suggestedThreshold))
    let policy = try Policy.parse(
      """
      version: 1
      containment: {screening: flag, extraction: quarantine, quarantine_seconds: 600}
      rules:
        - name: callers
          principals: [{spiffe_prefix: "spiffe://palisade.test"}]
          rpcs: ["*"]
      """)
    let quarantines = QuarantineStore()
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    let screener = InputScreener(
      settings: .defaults, policy: PolicyStore(policy), quarantines: quarantines, metrics: ServerMetrics(),
      logger: logger)
    let call = CallContext(
      identity: PeerIdentity(
        spiffeID: try SPIFFEID(parsing: "spiffe://palisade.test/sa/batch"), thumbprint: [1, 2, 3]),
      requestID: "r")
    var r = 0
    var flagged = 0
    while r + 32 <= s.streamRows {
      let q = try request(s.stream[(r * 784)..<((r + 32) * 784)])
      if try await screener.screen(q, descriptor: descriptor, call: call).outOfDistribution { flagged += 1 }
      r += 32
    }
    #expect(quarantines.list().isEmpty, "natural traffic quarantined (\(flagged) of \(r / 32) requests had an odd row)")
  }

  @Test(arguments: [1, 32]) func seedPerturbationSynthesisOnWideInputsRaisesThePradaAlarm(rowsPerRequest: Int) throws {
    let s = try setup()
    var rng = SplitMix64(seed: 3)
    var rows: [Double] = []
    for seedRow in stride(from: 0, to: 400, by: 40) {
      let seed = Array(s.stream[(seedRow * 784)..<(seedRow * 784 + 784)])
      for i in 0..<20 {
        rows += i == 0 ? seed : seed.map { min(1, max(0, $0 + (Double(rng.next() % 1000) / 1000 - 0.5) * 0.1)) }
      }
    }
    var alarm: ExtractionMonitor.Alarm? = nil
    var r = 0
    while alarm == nil && (r + rowsPerRequest) * 784 <= rows.count {
      let q = try request(rows[(r * 784)..<((r + rowsPerRequest) * 784)])
      alarm = s.monitor.observe(
        principal: "spiffe://t/synth", inputs: q, outOfDistribution: (s.scorer.score(q)?.mahalanobis ?? 0) > s.threshold
      )
      r += rowsPerRequest
    }
    #expect(alarm?.detector == .prada, "after \(r) rows")
  }

  @Test func randomProbingOfAWideInputRaisesTheOODShareAlarm() throws {
    let s = try setup()
    var rng = SplitMix64(seed: 42)
    var alarm: ExtractionMonitor.Alarm? = nil
    var sent = 0
    while alarm == nil && sent < 500 {
      let q = try request(ArraySlice((0..<784).map { _ in Double(rng.next() % 1000) / 1000 }))
      alarm = s.monitor.observe(
        principal: "spiffe://t/prober", inputs: q,
        outOfDistribution: (s.scorer.score(q)?.mahalanobis ?? 0) > s.threshold)
      sent += 1
    }
    #expect(alarm?.detector == .oodShare, "after \(sent) queries")
    #expect(sent <= 100)
  }

  /// A request whose monitored input does not have the declared feature count is not looked at (it cannot be
  /// projected); the stream is not disturbed.
  @Test func aRowOfAnotherWidthIsSkipped() throws {
    let monitor = ExtractionMonitor(input: "input", features: 784, settings: .defaults)
    let odd = [try Tensor(name: "input", shape: [2, 100], values: [Float](repeating: 0.5, count: 200))]
    #expect(monitor.observe(principal: "spiffe://t/odd", inputs: odd, outOfDistribution: nil) == nil)
    let fp64 = [try Tensor(name: "input", shape: [1, 784], values: [Double](repeating: 0.25, count: 784))]
    #expect(monitor.observe(principal: "spiffe://t/odd", inputs: fp64, outOfDistribution: nil) == nil)
  }
}
