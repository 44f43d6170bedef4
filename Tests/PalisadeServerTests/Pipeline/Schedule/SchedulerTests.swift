import Foundation
import PalisadeCore
@testable import PalisadeServer
import PalisadeTestSupport
import Testing

/// Stage 7 on its own: queues, shedding, deadlines, batching and the circuit breaker, with real models.
@Suite struct SchedulerTests {
  func request(_ rows: Int, _ base: Float) throws -> [Tensor] {
    [try Tensor(name: "IN", shape: [Int64(rows), 4], values: (0..<(rows * 4)).map { base + Float($0) })]
  }

  func settings(queue: Int = 64, batching: Bool = true) -> Scheduler.Settings {
    Scheduler.Settings(
      maxConcurrentExecutions: 4, modelMaxConcurrentExecutions: 1, queueLimit: 64, modelQueueLimit: queue,
      batching: batching, maxBatch: 8, maxDelay: .microseconds(300), principalQueueShare: 1)
  }

  /// Waits until `scheduler` has `n` requests queued.
  func waitQueued(_ scheduler: Scheduler, _ n: Int) async throws {
    for _ in 0..<400 where scheduler.queued != n { try await Task.sleep(for: .milliseconds(5)) }
    #expect(scheduler.queued == n)
  }

  @Test func concurrentRequestsAreBatchedAndEachCallerGetsItsOwnRows() async throws {
    let model = DoublingModel(gated: true)
    let scheduler = Scheduler(settings: settings(), metrics: ServerMetrics())
    let first = Task { try await scheduler.run(model, inputs: try request(1, 1000), requestedOutputs: nil) }
    for _ in 0..<400 where model.executions.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
    // The model is busy with the first request: the next ones queue and then run together.
    let rows = [1, 2, 1, 3]
    let others = rows.enumerated().map { i, n in
      Task { try await scheduler.run(model, inputs: try request(n, Float(i * 100)), requestedOutputs: nil) }
    }
    try await waitQueued(scheduler, rows.count)
    model.setGate(open: true)
    _ = try await first.value
    for (i, task) in others.enumerated() {
      let out = try await task.value
      #expect(out.count == 1)
      #expect(out[0].shape == [Int64(rows[i]), 4])
      #expect(
        out[0].values(as: Float.self)
          == (try request(rows[i], Float(i * 100)))[0].values(as: Float.self)?.map { $0 * 2 })
    }
    #expect(model.executions == [1, 7], "executions: \(model.executions)")
  }

  @Test func queueWaitIsReportedForTheQueueStage() async throws {
    // The pipeline times stage 7 (the wait) apart from stage 8 (compute) from what the queue reports.
    let model = DoublingModel(gated: true)
    let scheduler = Scheduler(settings: settings(batching: false), metrics: ServerMetrics())
    let (queue, _) = scheduler.lookup(model)
    let first = Task { try await queue.submit(inputs: try request(1, 1), requestedOutputs: nil, principal: "a") }
    for _ in 0..<400 where model.executions.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
    let second = Task { try await queue.submit(inputs: try request(1, 2), requestedOutputs: nil, principal: "b") }
    try await waitQueued(scheduler, 1)
    // The second request is queued now and cannot start before the gate opens: it waits at least this long.
    try await Task.sleep(for: .milliseconds(50))
    model.setGate(open: true)
    #expect(try await first.value.waited == .zero, "an idle model runs the request directly")
    let waited = try await second.value.waited
    #expect(waited >= .milliseconds(50), "waited \(waited)")
  }

  @Test func withoutBatchingEveryRequestRunsAlone() async throws {
    let model = DoublingModel(gated: true)
    let scheduler = Scheduler(settings: settings(batching: false), metrics: ServerMetrics())
    let tasks = (0..<3).map { i in
      Task { try await scheduler.run(model, inputs: try request(1, Float(i)), requestedOutputs: nil) }
    }
    try await waitQueued(scheduler, 2)
    model.setGate(open: true)
    for t in tasks { _ = try await t.value }
    #expect(model.executions == [1, 1, 1])
  }

  @Test func aFullQueueShedsWithResourceExhausted() async throws {
    let model = DoublingModel(gated: true)
    let scheduler = Scheduler(settings: settings(queue: 2), metrics: ServerMetrics())
    let admitted = (0..<3).map { i in
      Task { try await scheduler.run(model, inputs: try request(1, Float(i)), requestedOutputs: nil) }
    }
    try await waitQueued(scheduler, 2)
    await #expect(
      throws: PalisadeError(.resourceExhausted, "model 'double' overloaded: its queue is full; retry later")
    ) {
      _ = try await scheduler.run(model, inputs: try request(1, 9), requestedOutputs: nil)
    }
    model.setGate(open: true)
    for t in admitted { _ = try await t.value }
    #expect(model.executions.reduce(0, +) == 3)
  }

  @Test func aRequestWhoseDeadlinePassesWhileQueuedIsDroppedUnrun() async throws {
    let model = DoublingModel(gated: true)
    let scheduler = Scheduler(settings: settings(), metrics: ServerMetrics())
    let running = Task { try await scheduler.run(model, inputs: try request(1, 0), requestedOutputs: nil) }
    for _ in 0..<400 where model.executions.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
    let queued = Task { try await scheduler.run(model, inputs: try request(3, 0), requestedOutputs: nil) }
    try await waitQueued(scheduler, 1)
    queued.cancel()  // what grpc-swift does when the call's deadline expires
    await #expect(throws: PalisadeError(.deadlineExceeded, "deadline exceeded while queued; the request was not run")) {
      _ = try await queued.value
    }
    #expect(scheduler.queued == 0)
    model.setGate(open: true)
    _ = try await running.value
    #expect(model.executions == [1], "the cancelled request must never reach the model")
  }

  @Test func consecutiveFailuresOpenTheBreakerAndAProbeClosesIt() async throws {
    let model = DoublingModel()
    var s = settings()
    s.breaker = .init(failureThreshold: 3, openDuration: .milliseconds(300), halfOpenProbes: 1)
    let scheduler = Scheduler(settings: s, metrics: ServerMetrics())
    let breaker = scheduler.breaker(for: model)
    model.setFailing(true)
    // Failures from two callers: the model is failing, not one caller's requests.
    for caller in ["a", "b", "a"] {
      try breaker.admit(principal: caller)
      await #expect(throws: PalisadeError.self) {
        _ = try await scheduler.run(model, inputs: try request(1, 0), requestedOutputs: nil, principal: caller)
      }
    }
    #expect(breaker.state == .open)
    #expect(throws: PalisadeError.self) { try breaker.admit() }
    do { try breaker.admit() } catch { #expect(error.code == .unavailable && error.message.contains("circuit open")) }
    try await Task.sleep(for: .milliseconds(350))
    model.setFailing(false)
    try breaker.admit()  // the half-open probe
    #expect(breaker.state == .halfOpen)
    #expect(throws: PalisadeError.self) { try breaker.admit() }  // only one probe at a time
    _ = try await scheduler.run(model, inputs: try request(1, 0), requestedOutputs: nil)
    #expect(breaker.state == .closed)
    try breaker.admit()
  }

  @Test func aFailedProbeOpensTheCircuitAgain() throws {
    let breaker = CircuitBreaker(model: "m", settings: .init(failureThreshold: 2, openDuration: .seconds(10)))
    let t0 = ContinuousClock.now
    breaker.record(success: false, principal: "a", now: t0)
    #expect(breaker.state == .closed)
    breaker.record(success: false, principal: "b", now: t0)
    #expect(breaker.state == .open)
    #expect(throws: PalisadeError.self) { try breaker.admit(now: t0 + .seconds(9)) }
    // Probes of two callers fail: the model is still failing, open again for everyone.
    #expect(try breaker.admit(principal: "a", now: t0 + .seconds(10)) == .probe)
    breaker.record(success: false, principal: "a", now: t0 + .seconds(11))
    #expect(breaker.state == .halfOpen)
    #expect(try breaker.admit(principal: "b", now: t0 + .seconds(11)) == .probe)
    breaker.record(success: false, principal: "b", now: t0 + .seconds(11))
    #expect(breaker.state == .open)
    #expect(throws: PalisadeError.self) { try breaker.admit(now: t0 + .seconds(20)) }
    try breaker.admit(now: t0 + .seconds(21))
    breaker.record(success: true, now: t0 + .seconds(21))
    #expect(breaker.state == .closed)
  }

  /// A breaker (threshold 2, open for 10 s) that two callers' failures opened at the returned instant.
  func openedByTwoCallers() -> (CircuitBreaker, ContinuousClock.Instant) {
    let breaker = CircuitBreaker(model: "m", settings: .init(failureThreshold: 2, openDuration: .seconds(10)))
    let t0 = ContinuousClock.now
    breaker.record(.modelFailure, principal: "a", now: t0)
    breaker.record(.modelFailure, principal: "b", now: t0)
    #expect(breaker.state == .open)
    return (breaker, t0)
  }

  @Test func oneCallerCannotKeepTheCircuitOpenByTakingEveryProbe() throws {
    let (breaker, t0) = openedByTwoCallers()
    // The attacker, whose requests make the model fail, is first to take the half-open probe, and fails it...
    #expect(try breaker.admit(principal: "attacker", now: t0 + .seconds(10)) == .probe)
    breaker.record(.modelFailure, principal: "attacker", now: t0 + .seconds(10))
    // ...which shuts it out, not everyone: the circuit stays half-open and the victim probes next.
    #expect(breaker.state == .halfOpen)
    #expect(throws: PalisadeError.self) { try breaker.admit(principal: "attacker", now: t0 + .seconds(11)) }
    #expect(try breaker.admit(principal: "victim", now: t0 + .seconds(11)) == .probe)
    breaker.record(.success, principal: "victim", now: t0 + .seconds(11))
    #expect(breaker.state == .closed)
    #expect(try breaker.admit(principal: "victim", now: t0 + .seconds(12)) == .pass)
  }

  @Test func slowExecutionsCountAsFailures() throws {
    let breaker = CircuitBreaker(model: "m", settings: .init(failureThreshold: 2, slowCall: .milliseconds(100)))
    breaker.record(success: true, principal: "a", duration: .milliseconds(50))
    #expect(breaker.state == .closed)
    breaker.record(success: true, principal: "a", duration: .milliseconds(150))
    breaker.record(success: true, principal: "b", duration: .milliseconds(150))
    #expect(breaker.state == .open)
  }

  @Test func oneCallersFailuresOpenTheCircuitForThatCallerOnly() throws {
    let breaker = CircuitBreaker(model: "m", settings: .init(failureThreshold: 3, openDuration: .seconds(10)))
    let t0 = ContinuousClock.now
    for _ in 0..<3 { breaker.record(.modelFailure, principal: "attacker", now: t0) }
    #expect(breaker.state == .closed)
    #expect(throws: PalisadeError.self) { try breaker.admit(principal: "attacker", now: t0 + .seconds(1)) }
    #expect(try breaker.admit(principal: "victim", now: t0 + .seconds(1)) == .pass)
    // After the open duration the attacker may try again.
    #expect(try breaker.admit(principal: "attacker", now: t0 + .seconds(10)) == .pass)
    // Caller errors and cancellations never count.
    for _ in 0..<10 { breaker.record(.notCounted, principal: "x", now: t0) }
    #expect(try breaker.admit(principal: "x", now: t0) == .pass)
  }

  @Test func aHalfOpenProbeThatNeverRunsIsHandedBack() throws {
    let (breaker, t0) = openedByTwoCallers()
    // A probe taken by a request that is then refused in validation (it never reaches the model)...
    let probe = try breaker.admit(now: t0 + .seconds(10))
    #expect(probe == .probe)
    #expect(throws: PalisadeError.self) { try breaker.admit(now: t0 + .seconds(10)) }
    breaker.release(probe)
    // ...is handed back: the next request probes, and its success closes the circuit.
    #expect(try breaker.admit(now: t0 + .seconds(10)) == .probe)
    breaker.record(.success, now: t0 + .seconds(10))
    #expect(breaker.state == .closed)
  }

  @Test func oneCallerCannotFillTheQueueForOthers() async throws {
    let model = DoublingModel(gated: true)
    var s = settings(queue: 8)
    s.principalQueueShare = 0.25
    let scheduler = Scheduler(settings: s, metrics: ServerMetrics())
    let running = Task {
      try await scheduler.run(model, inputs: try request(1, 0), requestedOutputs: nil, principal: "flood")
    }
    for _ in 0..<400 where model.executions.isEmpty { try await Task.sleep(for: .milliseconds(5)) }
    // The flooder may hold 2 of the 8 places.
    let queued = (0..<2).map { i in
      Task {
        try await scheduler.run(model, inputs: try request(1, Float(i)), requestedOutputs: nil, principal: "flood")
      }
    }
    try await waitQueued(scheduler, 2)
    await #expect(throws: PalisadeError.self) {
      _ = try await scheduler.run(model, inputs: try request(1, 9), requestedOutputs: nil, principal: "flood")
    }
    let other = Task {
      try await scheduler.run(model, inputs: try request(1, 5), requestedOutputs: nil, principal: "other")
    }
    try await waitQueued(scheduler, 3)
    model.setGate(open: true)
    _ = try await running.value
    for t in queued { _ = try await t.value }
    #expect(try await other.value.count == 1)
  }
}
