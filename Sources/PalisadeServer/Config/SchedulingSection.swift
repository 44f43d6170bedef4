import Foundation
public import PalisadeYAML

/// `scheduling:` (pipeline stage 7). `batching` only sets fields of these settings, so it is read here;
/// `circuit_breaker` is a section of its own.
extension Scheduler.Settings: DefaultedConfigSection {
  public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
    self = .defaults
    // 0: one per CPU core.
    let cores = ProcessInfo.processInfo.activeProcessorCount
    if let v = try map.int("max_concurrent_executions", in: 0...4096) { maxConcurrentExecutions = v == 0 ? cores : v }
    if let v = try map.int("model_max_concurrent_executions", in: 0...4096) {
      modelMaxConcurrentExecutions = v == 0 ? cores : v
    }
    try map.int("queue_limit", in: 1...1_000_000, into: &queueLimit)
    try map.int("model_queue_limit", in: 1...1_000_000, into: &modelQueueLimit)
    try map.double("principal_queue_share", in: 0.001...1, into: &principalQueueShare)
    if let b = try map.map("batching") {
      try b.bool("enabled", into: &batching)
      try b.int("max_batch", in: 1...4096, into: &maxBatch)
      if let us = try b.int("max_delay_us", in: 0...1_000_000) { maxDelay = .microseconds(us) }
      try b.finish()
    }
    breaker = try map.section("circuit_breaker", in: context)
  }
}

/// `scheduling.circuit_breaker`.
extension CircuitBreaker.Settings: DefaultedConfigSection {
  public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
    self = .defaults
    try map.int("failure_threshold", in: 1...10_000, into: &failureThreshold)
    if let v = try map.int("open_ms", in: 1...3_600_000) { openDuration = .milliseconds(v) }
    try map.int("half_open_probes", in: 1...1000, into: &halfOpenProbes)
    if let v = try map.int("slow_call_ms", in: 0...3_600_000) { slowCall = v == 0 ? nil : .milliseconds(v) }
  }
}
