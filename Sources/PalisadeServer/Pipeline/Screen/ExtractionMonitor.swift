import Foundation
public import PalisadeCore
import Synchronization

/// Watches each principal's query stream to one model for the signs of a model-extraction attack.
///
/// Two detectors, either raises the alarm:
/// - **PRADA** (Juuti et al., 2019): for every query row, its smallest L2 distance to that principal's recent
///   queries; natural queries give distances that look normally distributed, synthetic ones (seeds and their
///   perturbations) do not. When the Shapiro–Wilk W of the last `window` distances falls below
///   `normalityThreshold`, the stream is flagged.
/// - **Out-of-distribution share**: random probing of the input space looks normal to PRADA (all distances alike)
///   but nothing like the training data; when more than `oodShareThreshold` of the last `window` rows were out of
///   distribution (the model must have reference statistics), the stream is flagged.
///
/// Inputs wider than 64 features are projected to 64 dimensions with a fixed random ±1 projection (distances are
/// preserved approximately, and the cost per row stays bounded). State is bounded: `history` rows and `window`
/// distances per principal, at most `maxPrincipals` principals per model (the least recently seen are forgotten).
public final class ExtractionMonitor: Sendable {
  public struct Settings: Sendable, Equatable {
    public var history: Int
    public var window: Int
    public var normalityThreshold: Double
    public var oodShareThreshold: Double
    public var maxPrincipals: Int
    public init(history: Int = 256, window: Int = 100, normalityThreshold: Double = 0.8, oodShareThreshold: Double = 0.5, maxPrincipals: Int = 10_000) {
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
    public enum Detector: String, Sendable { case prada, oodShare = "ood_share" }
    public var detector: Detector
    /// W for PRADA, the share for the OOD detector.
    public var statistic: Double
  }

  struct Stream: Sendable {
    var history: [[Float]] = []
    var nextSlot = 0
    var distances: [Double] = []
    var oodFlags: [Bool] = []
    var lastSeen: UInt64 = 0
    /// Rows since the last normality test (it runs every `testEvery` rows: a sort and 50 quantiles per test).
    var sinceTest = 0
  }

  struct State: Sendable {
    var streams: [String: Stream] = [:]
    var tick: UInt64 = 0
  }

  public let settings: Settings
  /// Rows between PRADA normality tests: an attack is caught at most this many queries later.
  static let testEvery = 8
  let input: String
  let dimensions: Int
  let projection: [Float]?
  private let state = Mutex(State())

  /// Monitors `input` (the first screened input, or the first floating-point one) of a model declaring `features`.
  public init(input: String, features: Int, settings: Settings) {
    self.settings = settings
    self.input = input
    if features > 64 {
      dimensions = 64
      // A fixed seed: the same projection for every principal and every restart.
      var rng = SplitMix64(seed: 0x5052_4144_4121)
      projection = (0..<(64 * features)).map { _ in rng.next() & 1 == 0 ? -1 : 1 }
    } else {
      dimensions = features
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
      if let last = spec.shape.last, last > 0 { return (spec.name, Int(last)) }
    }
    return nil
  }

  /// Adds a request's rows to `principal`'s stream; returns an alarm when a detector fires (the stream then starts
  /// over, so one burst raises one alarm).
  public func observe(principal: String, inputs: [Tensor], outOfDistribution: Bool?) -> Alarm? {
    observe(principal: principal, FloatingInputs(inputs), outOfDistribution: outOfDistribution)
  }

  func observe(principal: String, _ floating: FloatingInputs, outOfDistribution: Bool?) -> Alarm? {
    guard let converted = floating.byName[input] else { return nil }
    let k = converted.width
    let values = converted.values
    var rows: [[Float]] = []
    var r = 0
    while r + k <= values.count {
      rows.append(project(values[r..<(r + k)], k))
      r += k
    }
    guard !rows.isEmpty else { return nil }
    return state.withLock { s -> Alarm? in
      s.tick &+= 1
      if s.streams[principal] == nil && s.streams.count >= settings.maxPrincipals {
        if let oldest = s.streams.min(by: { $0.value.lastSeen < $1.value.lastSeen })?.key { s.streams[oldest] = nil }
      }
      var stream = s.streams[principal] ?? Stream()
      stream.lastSeen = s.tick
      var alarm: Alarm? = nil
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
          if stream.distances.count > settings.window { stream.distances.removeFirst(stream.distances.count - settings.window) }
        }
        if stream.history.count < settings.history {
          stream.history.append(row)
        } else {
          stream.history[stream.nextSlot] = row
          stream.nextSlot = (stream.nextSlot + 1) % settings.history
        }
        if let ood = outOfDistribution {
          stream.oodFlags.append(ood)
          if stream.oodFlags.count > settings.window { stream.oodFlags.removeFirst(stream.oodFlags.count - settings.window) }
        }
      }
      if stream.oodFlags.count >= settings.window {
        let share = Double(stream.oodFlags.filter { $0 }.count) / Double(stream.oodFlags.count)
        if share > settings.oodShareThreshold { alarm = Alarm(detector: .oodShare, statistic: share) }
      }
      stream.sinceTest += rows.count
      if alarm == nil, stream.distances.count >= settings.window, stream.sinceTest >= Self.testEvery {
        stream.sinceTest = 0
        if let w = Statistics.shapiroWilkW(stream.distances), w < settings.normalityThreshold {
          alarm = Alarm(detector: .prada, statistic: w)
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
