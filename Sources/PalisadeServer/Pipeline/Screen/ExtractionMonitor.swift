import Foundation
public import PalisadeCore
import PalisadeKernels
import Synchronization

/// Watches each principal's query stream to one model for the signs of a model-extraction attack.
///
/// Two detectors, either raises the alarm:
/// - **PRADA** (Juuti et al., 2019): for every query row, its smallest L2 distance to that principal's recent
///   queries; natural queries give distances that look normally distributed, synthetic ones (seeds and their
///   perturbations) do not. When the Shapiro–Wilk W of the last `window` distances falls below
///   `normalityThreshold`, the stream is flagged. Needs no reference statistics.
/// - **Out-of-distribution share**: random probing of the input space looks normal to PRADA (all distances alike)
///   but nothing like the training data; when more than `oodShareThreshold` of the last `window` rows were out of
///   distribution (the model must have reference statistics), the stream is flagged.
///
/// Inputs wider than 64 features are projected to 32 dimensions with a fixed random ±1 projection
/// (Johnson–Lindenstrauss: distances are kept to within ~10%, which PRADA's distribution test tolerates), one
/// SGEMM per request for all its rows. Nearest distances run on the kernels' vector code over recent rows
/// stored eight at a time. State is bounded: `history` rows and `window` distances per principal, at most
/// `maxPrincipals` principals per model (the least recently seen are forgotten).
public final class ExtractionMonitor: Sendable {
  public struct Settings: Sendable, Equatable {
    public var history: Int
    public var window: Int
    public var normalityThreshold: Double
    public var oodShareThreshold: Double
    public var maxPrincipals: Int
    public init(
      history: Int = 256, window: Int = 100, normalityThreshold: Double = 0.8, oodShareThreshold: Double = 0.5,
      maxPrincipals: Int = 10_000
    ) {
      self.history = history
      self.window = window
      self.normalityThreshold = normalityThreshold
      self.oodShareThreshold = oodShareThreshold
      self.maxPrincipals = maxPrincipals
    }
    public static let defaults = Settings()
  }

  /// Why the alarm was raised.
  public struct Alarm: Sendable, Equatable {
    public enum Detector: String, Sendable {
      case prada
      case oodShare = "ood_share"
    }
    public var detector: Detector
    /// W for PRADA, the share for the OOD detector.
    public var statistic: Double
  }

  /// One principal's stream: fixed-size rings, allocated once. A class so that it is updated in place under the
  /// lock (a struct in the dictionary would be copied on write by every request). Only ever touched with the
  /// monitor's mutex held, hence the unchecked conformance.
  final class Stream: @unchecked Sendable {
    /// The last `history` rows (projected), `InterleavedRows` layout; `rows` of them written so far.
    var history: [Float]
    var rows = 0
    var nextSlot = 0
    /// Ring of the last `window` nearest distances, and the same values kept sorted (one removal and one insertion
    /// per row instead of a sort per normality test).
    var distances: [Double]
    var sortedDistances: [Double] = []
    var distanceCount = 0
    var nextDistance = 0
    /// Ring of the last `window` out-of-distribution flags, and how many of them are set.
    var oodFlags: [Bool]
    var oodCount = 0
    var nextFlag = 0
    var oodSet = 0
    var lastSeen: UInt64 = 0
    /// Rows since the last normality test (it runs every `testEvery` rows: a sort of `window` distances).
    var sinceTest = 0

    init(history: Int, dimension: Int, window: Int) {
      self.history = [Float](repeating: 0, count: InterleavedRows.count(rows: history, dimension: dimension))
      distances = [Double](repeating: 0, count: window)
      sortedDistances.reserveCapacity(window)
      oodFlags = [Bool](repeating: false, count: window)
    }

    func addDistance(_ d: Double, window: Int) {
      if distanceCount == window {
        let old = distances[nextDistance]
        sortedDistances.remove(at: Self.lowerBound(old, in: sortedDistances))
      } else {
        distanceCount += 1
      }
      distances[nextDistance] = d
      nextDistance = (nextDistance + 1) % window
      sortedDistances.insert(d, at: Self.lowerBound(d, in: sortedDistances))
    }

    /// The first index whose value is not below `value` (all values are finite).
    static func lowerBound(_ value: Double, in sorted: [Double]) -> Int {
      var low = 0
      var high = sorted.count
      while low < high {
        let mid = (low + high) / 2
        if sorted[mid] < value { low = mid + 1 } else { high = mid }
      }
      return low
    }
  }

  struct State: Sendable {
    var streams: [String: Stream] = [:]
    var tick: UInt64 = 0
  }

  public let settings: Settings
  /// Rows between PRADA normality tests: an attack is caught at most this many queries later.
  static let testEvery = 8
  /// Inputs wider than this are projected, to `projectedDimensions`.
  static let projectAbove = 64
  static let projectedDimensions = 32
  let input: String
  let features: Int
  /// Dimensions of the rows the distances are taken in.
  let dimensions: Int
  /// `features × dimensions`, row-major, entries ±1/√dimensions; nil when rows are used as they are.
  let projection: [Float]?
  /// Shapiro–Wilk coefficients for `window` distances (nil if the window is outside the test's range).
  let normality: ShapiroWilk?
  private let history: Int
  private let window: Int
  private let state = Mutex(State())

  /// Monitors `input` (the first screened input, or the first floating-point one) of a model declaring `features`.
  public init(input: String, features: Int, settings: Settings) {
    self.settings = settings
    self.input = input
    self.features = max(features, 0)
    history = max(1, settings.history)
    window = max(1, settings.window)
    normality = ShapiroWilk(n: window)
    if features > Self.projectAbove {
      let d = Self.projectedDimensions
      dimensions = d
      // A fixed seed: the same projection for every principal and every restart.
      var rng = SplitMix64(seed: 0x5052_4144_4121)
      let scale = 1 / Float(d).squareRoot()
      projection = (0..<(features * d)).map { _ in rng.next() & 1 == 0 ? -scale : scale }
    } else {
      dimensions = max(features, 0)
      projection = nil
    }
  }

  /// Chooses the monitored input of a model: one with reference statistics, else the first floating-point input
  /// with a fixed feature dimension.
  public static func monitoredInput(_ descriptor: ModelDescriptor) -> (name: String, features: Int)? {
    for spec in descriptor.inputs where [.fp16, .fp32, .fp64].contains(spec.datatype) {
      if let ref = descriptor.screening.references[spec.name] { return (spec.name, ref.mean.count) }
    }
    for spec in descriptor.inputs where [.fp16, .fp32, .fp64].contains(spec.datatype) {
      if let last = spec.shape.last, last > 0, let n = Int(exactly: last) { return (spec.name, n) }
    }
    return nil
  }

  /// Which of a request's rows were out of distribution: unknown (no reference statistics), one verdict for
  /// every row, or one per row.
  enum RowVerdicts {
    case unknown
    case all(Bool)
    case each([Bool])

    func callAsFunction(_ row: Int) -> Bool? {
      switch self {
      case .unknown: nil
      case .all(let v): v
      case .each(let v): row < v.count ? v[row] : nil
      }
    }
  }

  /// Adds a request's rows to `principal`'s stream; returns an alarm when a detector fires (the stream then starts
  /// over, so one burst raises one alarm). Inputs other than the monitored one are not looked at; a monitored
  /// input whose last dimension is not the declared feature count is skipped. `outOfDistribution` applies to
  /// every row.
  public func observe(principal: String, inputs: [Tensor], outOfDistribution: Bool?) -> Alarm? {
    observe(principal: principal, inputs: inputs, verdicts: outOfDistribution.map { .all($0) } ?? .unknown)
  }

  /// `observe` with a verdict per row (the screening stage's: a batch with one odd row is not 32 odd rows).
  func observe(principal: String, inputs: [Tensor], verdicts: RowVerdicts) -> Alarm? {
    guard dimensions > 0, let tensor = inputs.first(where: { $0.name == input }),
      let last = tensor.shape.last, last == Int64(features)
    else { return nil }
    let rows = tensor.elementCount / features
    guard rows > 0 else { return nil }
    return withRows(tensor, rows) { projected in
      record(principal: principal, projected, rows: rows, verdicts: verdicts)
    }
  }

  /// Calls `body` with the tensor's first `rows` rows as floats in `dimensions` dimensions (projected if wide).
  private func withRows(_ t: Tensor, _ rows: Int, _ body: (UnsafePointer<Float>) -> Alarm?) -> Alarm? {
    func project(_ x: UnsafePointer<Float>) -> Alarm? {
      guard let projection else { return body(x) }
      var out = [Float](repeating: 0, count: rows * dimensions)
      projection.withUnsafeBufferPointer { r in
        out.withUnsafeMutableBufferPointer { y in
          guard let rp = r.baseAddress, let yp = y.baseAddress else { return }
          // One GEMM for every row of the request: [rows × features] · [features × dimensions].
          sgemm(
            transA: false, transB: false, m: rows, n: dimensions, k: features, alpha: 1, a: x, lda: features,
            b: rp, ldb: dimensions, beta: 0, c: yp, ldc: dimensions)
        }
      }
      return out.withUnsafeBufferPointer { $0.baseAddress.flatMap(body) }
    }
    if t.datatype == .fp32, case .fixed(let raw) = t.storage, raw.count >= rows * features * 4 {
      // The request's own bytes (little-endian FP32, as the host): no copy, no conversion.
      return raw.withUnsafeBytes { bytes in
        bytes.withMemoryRebound(to: Float.self) { $0.baseAddress.flatMap(project) }
      }
    }
    let converted: [Float]
    switch t.datatype {
    case .fp16: converted = Half.floats(littleEndian: t.rawContents)
    case .fp64: converted = (t.values(as: Double.self) ?? []).map { Float($0) }
    default: return nil
    }
    guard converted.count >= rows * features else { return nil }
    return converted.withUnsafeBufferPointer { $0.baseAddress.flatMap(project) }
  }

  private func record(principal: String, _ projected: UnsafePointer<Float>, rows: Int, verdicts: RowVerdicts) -> Alarm?
  {
    let d = dimensions
    return state.withLock { s -> Alarm? in
      s.tick &+= 1
      if s.streams[principal] == nil && s.streams.count >= settings.maxPrincipals {
        if let oldest = s.streams.min(by: { $0.value.lastSeen < $1.value.lastSeen })?.key { s.streams[oldest] = nil }
      }
      let stream: Stream
      if let existing = s.streams[principal] {
        stream = existing
      } else {
        stream = Stream(history: history, dimension: d, window: window)
        s.streams[principal] = stream
      }
      stream.lastSeen = s.tick
      stream.history.withUnsafeMutableBufferPointer { h in
        guard let hp = h.baseAddress else { return }
        for r in 0..<rows {
          let row = projected + r * d
          if stream.rows > 0 {
            let best = InterleavedRows.nearestSquaredDistance(to: row, dimension: d, in: hp, rows: stream.rows)
            // A non-finite distance (inputs allowed to be non-finite, or overflowing) says nothing about the
            // stream's shape and would break the sorted window's order.
            if best.isFinite { stream.addDistance(Double(best.squareRoot()), window: window) }
          }
          InterleavedRows.store(row, dimension: d, at: stream.nextSlot, into: hp)
          stream.nextSlot = (stream.nextSlot + 1) % history
          stream.rows = min(history, stream.rows + 1)
          if let ood = verdicts(r) {
            if stream.oodCount == window, stream.oodFlags[stream.nextFlag] { stream.oodSet -= 1 }
            stream.oodFlags[stream.nextFlag] = ood
            if ood { stream.oodSet += 1 }
            stream.nextFlag = (stream.nextFlag + 1) % window
            stream.oodCount = min(window, stream.oodCount + 1)
          }
        }
      }
      var alarm: Alarm? = nil
      if stream.oodCount >= window {
        let share = Double(stream.oodSet) / Double(stream.oodCount)
        if share > settings.oodShareThreshold { alarm = Alarm(detector: .oodShare, statistic: share) }
      }
      stream.sinceTest += rows
      if alarm == nil, stream.distanceCount >= window, stream.sinceTest >= Self.testEvery, let normality {
        stream.sinceTest = 0
        if let w = normality.w(sorted: stream.sortedDistances), w < settings.normalityThreshold {
          alarm = Alarm(detector: .prada, statistic: w)
        }
      }
      if alarm != nil { s.streams[principal] = nil }
      return alarm
    }
  }
}

/// A small deterministic generator (SplitMix64) for the fixed projection.
struct SplitMix64: RandomNumberGenerator {
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
