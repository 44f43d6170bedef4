import Foundation
import Logging
import PalisadeCore
import PalisadeIdentity
import PalisadePolicy
import PalisadeServer
import PalisadeTestSupport
import Synchronization

#if canImport(Glibc)
  import Glibc
#endif

/// `serving-bench screen [ROWS [FEATURESxROWS]]`: the screening stage's cost per row, in process (release build);
/// with e.g. `784x1` only the new monitor at that width and batch, with `screen784x1` only the stage (for
/// `perf record`).
///
/// - the extraction monitor alone (`ExtractionMonitor.observe`) at d = 784 (projected) and d = 64, one row and 32
///   rows per request, on a stream whose history is already full (steady state);
/// - the whole stage 6 (`InputScreener.screen`: conversion, OOD score, drift, extraction monitor) for a model
///   without reference statistics (784 features) and with them (64 features, diagonal covariance).
///
/// Rows are smooth pseudo-images (a few random blobs); 1024 different rows (4x the history, so no row meets its
/// own copy) cycle, so inputs come from L3 as a just-decoded request's would come from L1/L2 at best. CPU time
/// is the process's (getrusage), wall time the clock's, both divided by rows.
extension ServingBench {
  static func screeningBench(rows: Int, only: String? = nil) async throws {
    var logger = Logger(label: "bench")
    logger.logLevel = .critical
    let pki = try TestPKI()
    let client = try pki.client("bench", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/bench")])
    let call = CallContext(identity: try PeerIdentity(certificate: client.issued.certificate), requestID: "bench")
    var rng = BenchRNG(seed: 7)

    func images(_ count: Int, side: Int) -> [Float] {
      var out = [Float](repeating: 0, count: count * side * side)
      for r in 0..<count {
        for _ in 0..<3 {
          let cx = Float(rng.next() % UInt64(side))
          let cy = Float(rng.next() % UInt64(side))
          let radius = Float(side) / Float(4 + rng.next() % 4)
          for y in 0..<side {
            for x in 0..<side {
              let d2 = (Float(x) - cx) * (Float(x) - cx) + (Float(y) - cy) * (Float(y) - cy)
              out[r * side * side + y * side + x] += exp(-d2 / (radius * radius))
            }
          }
        }
      }
      return out
    }

    func cpuMicros() -> Double {
      var usage = rusage()
      getrusage(RUSAGE_SELF.rawValue, &usage)
      return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6
        + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
    }

    struct Result {
      var wallPerRow: Double
      var cpuPerRow: Double
      var alarms: Int
    }

    /// Times `body` over `requests` prepared requests (`rowsPerRequest` rows each), cycling through them.
    func time(_ requests: [[Tensor]], rowsPerRequest: Int, total: Int, _ body: ([Tensor]) async throws -> Bool)
      async rethrows -> Result
    {
      let calls = max(1, total / rowsPerRequest)
      // Warm-up: fills the history and the distance window.
      for i in 0..<max(400 / rowsPerRequest, 8) { _ = try await body(requests[i % requests.count]) }
      var alarms = 0
      let cpu0 = cpuMicros()
      let start = ContinuousClock.now
      for i in 0..<calls {
        if try await body(requests[i % requests.count]) { alarms += 1 }
      }
      let d = ContinuousClock.now - start
      let cpu = cpuMicros() - cpu0
      let wall = Double(d.components.seconds) * 1e6 + Double(d.components.attoseconds) / 1e12
      let n = Double(calls * rowsPerRequest)
      return Result(wallPerRow: wall / n, cpuPerRow: cpu / n, alarms: alarms)
    }

    func requests(side: Int, batch: Int, count: Int) throws -> [[Tensor]] {
      let features = side * side
      let pixels = images(count * batch, side: side)
      return try (0..<count).map { i in
        let slice = Array(pixels[(i * batch * features)..<((i + 1) * batch * features)])
        return [try Tensor(name: "input", shape: [Int64(batch), Int64(features)], values: slice)]
      }
    }

    print("| what | features | rows/request | µs/row (wall) | CPU µs/row | alarms |")
    print("|---|---:|---:|---:|---:|---:|")
    func report(_ what: String, _ features: Int, _ batch: Int, _ r: Result) {
      print(
        "| \(what) | \(features) | \(batch) | \(String(format: "%.2f", r.wallPerRow)) | \(String(format: "%.2f", r.cpuPerRow)) | \(r.alarms) |"
      )
    }

    for (side, batch) in [(28, 1), (28, 32), (8, 1), (8, 32)] where only == nil || only == "\(side * side)x\(batch)" {
      let reqs = try requests(side: side, batch: batch, count: max(32, 1024 / batch))
      if let only {
        let monitor = ExtractionMonitor(input: "input", features: side * side, settings: .defaults)
        let r = await time(reqs, rowsPerRequest: batch, total: rows) { q in
          monitor.observe(principal: "spiffe://palisade.test/sa/bench", inputs: q, outOfDistribution: nil) != nil
        }
        report("ExtractionMonitor.observe (\(only))", side * side, batch, r)
        return
      }
      let legacy = LegacyExtractionMonitor(input: "input", features: side * side, settings: .defaults)
      let before = await time(reqs, rowsPerRequest: batch, total: min(rows, side > 8 ? 5000 : rows)) { q in
        legacy.observe(principal: "spiffe://palisade.test/sa/bench", inputs: q, outOfDistribution: nil) != nil
      }
      report("ExtractionMonitor.observe, before (the previous code, same run)", side * side, batch, before)
      let monitor = ExtractionMonitor(input: "input", features: side * side, settings: .defaults)
      let r = await time(reqs, rowsPerRequest: batch, total: rows) { q in
        monitor.observe(principal: "spiffe://palisade.test/sa/bench", inputs: q, outOfDistribution: nil) != nil
      }
      report("ExtractionMonitor.observe", side * side, batch, r)
    }

    // The whole screening stage, as the pipeline calls it.
    let policy = PolicyStore(try Policy.parse(TestServer.allowAllPolicy))
    for (side, batch, withStats) in [(28, 1, false), (28, 32, false), (8, 1, true), (8, 32, true)]
    where only == nil || only == "screen\(side * side)x\(batch)" {
      let features = side * side
      let reqs = try requests(side: side, batch: batch, count: max(32, 1024 / batch))
      var profile = ScreeningProfile.none
      if withStats {
        // Reference statistics from 1000 rows of the same generator (diagonal covariance).
        let sample = images(1000, side: side)
        var mean = [Double](repeating: 0, count: features)
        var m2 = [Double](repeating: 0, count: features)
        for r in 0..<1000 { for j in 0..<features { mean[j] += Double(sample[r * features + j]) / 1000 } }
        for r in 0..<1000 {
          for j in 0..<features { m2[j] += pow(Double(sample[r * features + j]) - mean[j], 2) / 999 }
        }
        profile = ScreeningProfile(
          references: ["input": .init(mean: mean, std: m2.map { $0.squareRoot() })], threshold: 1e9)
      }
      let descriptor = ModelDescriptor(
        name: "bench", version: "1", platform: "onnx",
        inputs: [TensorSpec(name: "input", datatype: .fp32, shape: [-1, Int64(features)])],
        outputs: [TensorSpec(name: "output", datatype: .fp32, shape: [-1, 10])], screening: profile)
      let screener = InputScreener(
        settings: .defaults, policy: policy, quarantines: QuarantineStore(), metrics: ServerMetrics(), logger: logger)
      let r = try await time(reqs, rowsPerRequest: batch, total: rows) { q in
        _ = try await screener.screen(q, descriptor: descriptor, call: call)
        return false
      }
      report(
        "InputScreener.screen, \(withStats ? "reference statistics" : "no reference statistics")", features, batch, r)
    }
  }
}

/// SplitMix64, for reproducible benchmark inputs.
struct BenchRNG {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}

/// The extraction monitor as it was before the batched projection (commit 36313d6), kept as the baseline the
/// benchmark compares against in the same run: per-row scalar projection to 64 dimensions, per-row scalar
/// distances to `[[Float]]` history, Shapiro–Wilk coefficients recomputed at every test.
final class LegacyExtractionMonitor: Sendable {
  struct LegacyAlarm: Sendable {
    var detector: String
    var statistic: Double
  }
  struct Stream: Sendable {
    var history: [[Float]] = []
    var nextSlot = 0
    var distances: [Double] = []
    var oodFlags: [Bool] = []
    var lastSeen: UInt64 = 0
    var sinceTest = 0
  }
  struct State: Sendable {
    var streams: [String: Stream] = [:]
    var tick: UInt64 = 0
  }
  let settings: ExtractionMonitor.Settings
  let input: String
  let dimensions: Int
  let projection: [Float]?
  private let state = Mutex(State())

  init(input: String, features: Int, settings: ExtractionMonitor.Settings) {
    self.settings = settings
    self.input = input
    if features > 64 {
      dimensions = 64
      var rng = BenchRNG(seed: 0x5052_4144_4121)
      projection = (0..<(64 * features)).map { _ in rng.next() & 1 == 0 ? -1 : 1 }
    } else {
      dimensions = features
      projection = nil
    }
  }

  func observe(principal: String, inputs: [Tensor], outOfDistribution: Bool?) -> LegacyAlarm? {
    // What FloatingInputs did: every floating input converted to Double rows.
    var byName: [String: (width: Int, values: [Double])] = [:]
    for t in inputs {
      guard let last = t.shape.last, last > 0, let values = t.floatingPointValues, !values.isEmpty else { continue }
      byName[t.name] = (Int(last), values)
    }
    guard let converted = byName[input] else { return nil }
    let k = converted.width
    let values = converted.values
    var rows: [[Float]] = []
    var r = 0
    while r + k <= values.count {
      rows.append(project(values[r..<(r + k)], k))
      r += k
    }
    guard !rows.isEmpty else { return nil }
    return state.withLock { s -> LegacyAlarm? in
      s.tick &+= 1
      if s.streams[principal] == nil && s.streams.count >= settings.maxPrincipals {
        if let oldest = s.streams.min(by: { $0.value.lastSeen < $1.value.lastSeen })?.key { s.streams[oldest] = nil }
      }
      var stream = s.streams[principal] ?? Stream()
      stream.lastSeen = s.tick
      var alarm: LegacyAlarm? = nil
      for row in rows {
        if !stream.history.isEmpty {
          var best = Float.infinity
          for h in stream.history {
            var sum: Float = 0
            for j in 0..<row.count {
              let d = row[j] - h[j]
              sum += d * d
            }
            best = min(best, sum)
          }
          stream.distances.append(Double(best.squareRoot()))
          if stream.distances.count > settings.window {
            stream.distances.removeFirst(stream.distances.count - settings.window)
          }
        }
        if stream.history.count < settings.history {
          stream.history.append(row)
        } else {
          stream.history[stream.nextSlot] = row
          stream.nextSlot = (stream.nextSlot + 1) % settings.history
        }
        if let ood = outOfDistribution {
          stream.oodFlags.append(ood)
          if stream.oodFlags.count > settings.window {
            stream.oodFlags.removeFirst(stream.oodFlags.count - settings.window)
          }
        }
      }
      if stream.oodFlags.count >= settings.window {
        let share = Double(stream.oodFlags.filter { $0 }.count) / Double(stream.oodFlags.count)
        if share > settings.oodShareThreshold { alarm = LegacyAlarm(detector: "ood_share", statistic: share) }
      }
      stream.sinceTest += rows.count
      if alarm == nil, stream.distances.count >= settings.window, stream.sinceTest >= 8 {
        stream.sinceTest = 0
        if let w = legacyShapiroWilkW(stream.distances), w < settings.normalityThreshold {
          alarm = LegacyAlarm(detector: "prada", statistic: w)
        }
      }
      s.streams[principal] = alarm == nil ? stream : nil
      return alarm
    }
  }

  private func project(_ row: ArraySlice<Double>, _ k: Int) -> [Float] {
    guard let projection else { return row.map { Float($0) } }
    var out = [Float](repeating: 0, count: dimensions)
    let base = row.startIndex
    for d in 0..<dimensions {
      var sum: Float = 0
      for j in 0..<k { sum += projection[d * k + j] * Float(row[base + j]) }
      out[d] = sum / Float(dimensions).squareRoot()
    }
    return out
  }
}

/// The previous Shapiro–Wilk W: coefficients (n/2 normal quantiles) recomputed at every call.
func legacyShapiroWilkW(_ sample: [Double]) -> Double? {
  func normalQuantile(_ p: Double) -> Double {
    guard p > 0, p < 1 else { return p <= 0 ? -.infinity : .infinity }
    let a = [
      -3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
      -3.066479806614716e+01, 2.506628277459239e+00,
    ]
    let b = [
      -5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
      -1.328068155288572e+01,
    ]
    let c = [
      -7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
      4.374664141464968e+00, 2.938163982698783e+00,
    ]
    let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
    let low = 0.02425
    if p < low {
      let q = (-2 * Foundation.log(p)).squareRoot()
      return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
        / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    }
    if p > 1 - low { return -normalQuantile(1 - p) }
    let q = p - 0.5
    let r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
      / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
  }
  let n = sample.count
  guard n >= 3, n <= 5000 else { return nil }
  let x = sample.sorted()
  guard let first = x.first, let last = x.last, last - first > 1e-300 else { return nil }
  let half = n / 2
  var a = [Double](repeating: 0, count: half + 1)
  if n == 3 {
    a[1] = 0.5.squareRoot()
  } else {
    let an = Double(n)
    var summ2 = 0.0
    for i in 1...half {
      a[i] = normalQuantile((Double(i) - 0.375) / (an + 0.25))
      summ2 += a[i] * a[i]
    }
    summ2 *= 2
    let ssumm2 = summ2.squareRoot()
    let rsn = 1 / an.squareRoot()
    func poly(_ c: [Double], _ x: Double) -> Double { c.reversed().reduce(0) { $0 * x + $1 } }
    let c1 = [0.0, 0.221157, -0.147981, -2.07119, 4.434685, -2.706056]
    let c2 = [0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633]
    let a1 = poly(c1, rsn) - a[1] / ssumm2
    let i1: Int
    let fac: Double
    if n > 5 {
      i1 = 3
      let a2 = -a[2] / ssumm2 + poly(c2, rsn)
      fac = ((summ2 - 2 * a[1] * a[1] - 2 * a[2] * a[2]) / (1 - 2 * a1 * a1 - 2 * a2 * a2)).squareRoot()
      a[2] = a2
    } else {
      i1 = 2
      fac = ((summ2 - 2 * a[1] * a[1]) / (1 - 2 * a1 * a1)).squareRoot()
    }
    a[1] = a1
    if i1 <= half { for i in i1...half { a[i] /= -fac } }
  }
  let mean = x.reduce(0, +) / Double(n)
  var ss = 0.0
  for v in x { ss += (v - mean) * (v - mean) }
  var num = 0.0
  var norm = 0.0
  for i in 1...half {
    num += a[i] * (x[n - i] - x[i - 1])
    norm += 2 * a[i] * a[i]
  }
  guard ss > 0, norm > 0 else { return nil }
  return min(1, num * num / (norm * ss))
}
