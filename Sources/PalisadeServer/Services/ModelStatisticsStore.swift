import Foundation
import PalisadeCore
import PalisadeProto
import Synchronization

/// Per-model counters behind the `ModelStatistics` RPC (Triton's statistics extension).
public final class ModelStatisticsStore: Sendable {
  private struct Key: Hashable {
    var name: String
    var version: String
  }
  private struct Counters {
    var success = (count: UInt64(0), ns: UInt64(0))
    var fail = (count: UInt64(0), ns: UInt64(0))
    var computeInput = (count: UInt64(0), ns: UInt64(0))
    var computeInfer = (count: UInt64(0), ns: UInt64(0))
    var computeOutput = (count: UInt64(0), ns: UInt64(0))
    var lastInferenceMs: UInt64 = 0
  }
  private let counters = Mutex<[Key: Counters]>([:])

  public init() {}

  /// Forgets the counters of model versions that left the repository (RepositoryIndex no longer lists them, so
  /// ModelStatistics could never report them again).
  func release(_ descriptors: [ModelDescriptor]) {
    counters.withLock { all in
      for d in descriptors { all[Key(name: d.name, version: d.version)] = nil }
    }
  }

  /// Model versions with counters (tests).
  public var versionCount: Int { counters.withLock { $0.count } }

  /// Returns whether this made the version's counters.
  @discardableResult
  func recordSuccess(
    _ d: ModelDescriptor, total: Duration, inputPhase: Duration, compute: Duration, outputPhase: Duration
  ) -> Bool {
    let now = UInt64(Date().timeIntervalSince1970 * 1000)
    return counters.withLock { all in
      let made = all[Key(name: d.name, version: d.version)] == nil
      var c = all[Key(name: d.name, version: d.version), default: Counters()]
      c.success.count += 1
      c.success.ns += total.nanoseconds
      c.computeInput.count += 1
      c.computeInput.ns += inputPhase.nanoseconds
      c.computeInfer.count += 1
      c.computeInfer.ns += compute.nanoseconds
      c.computeOutput.count += 1
      c.computeOutput.ns += outputPhase.nanoseconds
      c.lastInferenceMs = now
      all[Key(name: d.name, version: d.version)] = c
      return made
    }
  }

  /// Returns whether this made the version's counters.
  @discardableResult
  func recordFailure(_ d: ModelDescriptor, total: Duration) -> Bool {
    counters.withLock { all in
      let made = all[Key(name: d.name, version: d.version)] == nil
      all[Key(name: d.name, version: d.version), default: Counters()].fail.count += 1
      all[Key(name: d.name, version: d.version), default: Counters()].fail.ns += total.nanoseconds
      return made
    }
  }

  /// Statistics for the versions in `index` matching `name`/`version` (empty = all).
  func statistics(for entries: [ModelRepository.IndexEntry], name: String, version: String)
    -> [Inference_ModelStatistics]
  {
    let snapshot = counters.withLock { $0 }
    return entries.filter { (name.isEmpty || $0.name == name) && (version.isEmpty || $0.version == version) }.map {
      entry in
      let c = snapshot[Key(name: entry.name, version: entry.version)] ?? Counters()
      func duration(_ v: (count: UInt64, ns: UInt64)) -> Inference_StatisticDuration {
        var d = Inference_StatisticDuration()
        d.count = v.count
        d.ns = v.ns
        return d
      }
      var stats = Inference_ModelStatistics()
      stats.name = entry.name
      stats.version = entry.version
      stats.lastInference = c.lastInferenceMs
      stats.inferenceCount = c.success.count
      stats.executionCount = c.success.count
      stats.inferenceStats.success = duration(c.success)
      stats.inferenceStats.fail = duration(c.fail)
      stats.inferenceStats.computeInput = duration(c.computeInput)
      stats.inferenceStats.computeInfer = duration(c.computeInfer)
      stats.inferenceStats.computeOutput = duration(c.computeOutput)
      return stats
    }
  }
}

extension Duration {
  var nanoseconds: UInt64 {
    let (seconds, attoseconds) = components
    return UInt64(max(0, seconds)) &* 1_000_000_000 &+ UInt64(max(0, attoseconds / 1_000_000_000))
  }
}
