import Foundation
public import PalisadeCore
import PalisadeScreening
import Synchronization

/// Population stability index of each screened feature over a sliding window of recent rows, against the
/// reference statistics: each feature's values fall into ten bins whose edges are the deciles of a normal
/// distribution with the reference mean and standard deviation (10% expected mass each), and
/// PSI = Σ (actual − expected) · ln(actual / expected). Rule of thumb: < 0.1 stable, 0.1–0.25 drifting, > 0.25 shifted.
public final class DriftMonitor: Sendable {
  struct Feature: Sendable {
    var edges: [Double]
  }
  struct State: Sendable {
    /// Bin index per feature for each row in the window, row-major ring.
    var ring: [UInt8]
    var next = 0
    var filled = 0
    /// counts[feature * 10 + bin]
    var counts: [Int]
    var sinceExport = 0
  }
  final class Input: Sendable {
    let features: [Feature]
    let state: Mutex<State>
    init(features: [Feature], state: State) {
      self.features = features
      self.state = Mutex(state)
    }
  }

  public let window: Int
  private let inputs: [String: Input]
  private let publish: @Sendable (_ input: String, _ psi: [Double]) -> Void

  /// - Parameters:
  ///   - window: rows in the sliding window.
  ///   - publish: receives every feature's PSI for an input every `window / 10` rows once the window is full.
  public init(profile: ScreeningProfile, window: Int, publish: @escaping @Sendable (String, [Double]) -> Void) {
    self.window = max(10, window)
    self.publish = publish
    var inputs: [String: Input] = [:]
    for (name, ref) in profile.references where !ref.mean.isEmpty && ref.std.count == ref.mean.count {
      let features = zip(ref.mean, ref.std).map { m, s in
        Feature(edges: Statistics.normalDecileEdges.map { m + $0 * s })
      }
      let state = State(
        ring: [UInt8](repeating: 0, count: self.window * features.count),
        counts: [Int](repeating: 0, count: features.count * 10))
      inputs[name] = Input(features: features, state: state)
    }
    self.inputs = inputs
  }

  /// Adds every row of the screened inputs to the window.
  public func observe(_ tensors: [Tensor]) {
    observe(FloatingInputs(tensors))
  }

  func observe(_ floating: FloatingInputs) {
    for (name, converted) in floating.byName {
      guard let input = inputs[name], converted.width == input.features.count else { continue }
      let k = input.features.count
      let values = converted.values
      var bins = [UInt8](repeating: 0, count: k)
      var report: [Double]? = nil
      input.state.withLock { s in
        var r = 0
        while r + k <= values.count {
          for j in 0..<k {
            let edges = input.features[j].edges
            var b = 0
            while b < 9 && values[r + j] > edges[b] { b += 1 }
            bins[j] = UInt8(b)
          }
          let base = s.next * k
          if s.filled == window {
            for j in 0..<k { s.counts[j * 10 + Int(s.ring[base + j])] -= 1 }
          } else {
            s.filled += 1
          }
          for j in 0..<k {
            s.ring[base + j] = bins[j]
            s.counts[j * 10 + Int(bins[j])] += 1
          }
          s.next = (s.next + 1) % window
          s.sinceExport += 1
          r += k
        }
        if s.filled == window && s.sinceExport >= max(1, window / 10) {
          s.sinceExport = 0
          report = Self.psi(counts: s.counts, features: k, rows: s.filled)
        }
      }
      if let report { publish(name, report) }
    }
  }

  /// The current PSI per feature of `input` (nil until its window has filled).
  public func current(_ input: String) -> [Double]? {
    guard let i = inputs[input] else { return nil }
    return i.state.withLock { s in
      s.filled == window ? Self.psi(counts: s.counts, features: i.features.count, rows: s.filled) : nil
    }
  }

  static func psi(counts: [Int], features: Int, rows: Int) -> [Double] {
    let expected = 0.1
    let epsilon = 1e-4
    return (0..<features).map { j in
      var total = 0.0
      for b in 0..<10 {
        let actual = max(Double(counts[j * 10 + b]) / Double(rows), epsilon)
        total += (actual - expected) * Foundation.log(actual / expected)
      }
      return total
    }
  }
}
