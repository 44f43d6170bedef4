import DequeModule
public import Foundation
public import PalisadeCore
import Synchronization

/// Pipeline stage 7: admission control and dynamic batching.
///
/// Every model has a queue. A request joins its model's queue unless the queue (or the server-wide queue) is
/// full, in which case it is shed with RESOURCE_EXHAUSTED at once. Executions are limited server-wide and per
/// model; a request waits in the queue until both allow it to run. While it waits, its RPC's deadline or
/// cancellation removes it (DEADLINE_EXCEEDED) and it never reaches the model.
///
/// Dynamic batching: when a model takes a variable first (batch) dimension on every input and output, queued
/// requests with the same non-batch dimensions are concatenated up to `maxBatch` rows and run as one, and each
/// caller gets its own rows back. A request that finds the model idle runs at once; one that finds it busy waits
/// up to `maxDelay` for company, so batching costs nothing at low load and fills batches under load.
///
/// Fairness: one principal may hold at most `principalQueueShare` of each queue (the model's and the server's), so
/// a caller that floods a model is shed while the others still get in. Isolation: when a merged batch fails, each
/// of its requests runs again alone, so one caller's request can only fail that caller; and only the model's own
/// failures move its circuit breaker.
public final class Scheduler: Sendable {
  public struct Settings: Sendable, Equatable {
    /// Executions in flight across all models.
    public var maxConcurrentExecutions: Int
    /// Executions in flight per model.
    public var modelMaxConcurrentExecutions: Int
    /// Requests waiting across all models.
    public var queueLimit: Int
    /// Requests waiting per model.
    public var modelQueueLimit: Int
    public var batching: Bool
    public var maxBatch: Int
    public var maxDelay: Duration
    public var breaker: CircuitBreaker.Settings
    /// The share of each queue (per model and server-wide) one principal may hold, in (0, 1].
    public var principalQueueShare: Double

    public init(
      maxConcurrentExecutions: Int = ProcessInfo.processInfo.activeProcessorCount,
      modelMaxConcurrentExecutions: Int = ProcessInfo.processInfo.activeProcessorCount, queueLimit: Int = 512,
      modelQueueLimit: Int = 256, batching: Bool = true, maxBatch: Int = 32, maxDelay: Duration = .microseconds(300),
      breaker: CircuitBreaker.Settings = .defaults, principalQueueShare: Double = 0.25
    ) {
      self.maxConcurrentExecutions = max(1, maxConcurrentExecutions)
      self.modelMaxConcurrentExecutions = max(1, modelMaxConcurrentExecutions)
      self.queueLimit = max(1, queueLimit)
      self.modelQueueLimit = max(1, modelQueueLimit)
      self.batching = batching
      self.maxBatch = max(1, maxBatch)
      self.maxDelay = maxDelay
      self.breaker = breaker
      self.principalQueueShare = principalQueueShare.isFinite ? min(1, max(0.001, principalQueueShare)) : 0.25
    }

    /// Requests one principal may have waiting for one model.
    public var modelPrincipalQueueLimit: Int {
      max(1, Int((Double(modelQueueLimit) * principalQueueShare).rounded(.up)))
    }
    /// Requests one principal may have waiting across all models.
    public var principalQueueLimit: Int { max(1, Int((Double(queueLimit) * principalQueueShare).rounded(.up))) }
    public static let defaults = Settings()
  }

  public let settings: Settings
  let slots: ExecutionSlots
  let executor = ModelExecutor()
  let metrics: ServerMetrics
  private let queues = Mutex<[String: ModelQueue]>([:])

  public init(settings: Settings, metrics: ServerMetrics) {
    self.settings = settings
    self.metrics = metrics
    self.slots = ExecutionSlots(
      executions: settings.maxConcurrentExecutions, queueLimit: settings.queueLimit,
      principalLimit: settings.principalQueueLimit)
  }

  /// The queue of `model`, made on first use. Keyed by name, version and bundle digest, so a reloaded bundle gets
  /// a fresh queue and breaker.
  func queue(for model: any ServableModel) -> ModelQueue { lookup(model).queue }

  /// The queue of `model`, and whether this lookup made it (the caller then checks that the version is still
  /// loaded, see ``ModelRepository/holds(_:)``).
  func lookup(_ model: any ServableModel) -> (queue: ModelQueue, made: Bool) {
    let key = Self.key(model.descriptor)
    let (queue, made, count) = queues.withLock { q -> (ModelQueue, Bool, Int) in
      if let existing = q[key] { return (existing, false, q.count) }
      let made = ModelQueue(model: model, scheduler: self)
      q[key] = made
      return (made, true, q.count)
    }
    if made { metrics.setModelVersionStates(cache: "scheduler", count) }
    return (queue, made)
  }

  /// Drops the queues (each holds its model) and circuit breakers of model versions that left the repository.
  /// Nothing is lost: requests waiting or running in a dropped queue keep it alive (their tasks and the execution
  /// slots' waiting list hold it) and it finishes every one of them; then it, and the model, are freed.
  public func release(_ descriptors: [ModelDescriptor]) {
    let count = queues.withLock { q -> Int in
      for d in descriptors { q[Self.key(d)] = nil }
      return q.count
    }
    metrics.setModelVersionStates(cache: "scheduler", count)
  }

  /// Model versions with a queue (tests, and the `palisade_model_version_states` gauge).
  public var modelQueueCount: Int { queues.withLock { $0.count } }

  static func key(_ d: ModelDescriptor) -> String {
    "\(d.name)\u{0}\(d.version)\u{0}\(d.properties["bundle_digest"] ?? "")"
  }

  /// The circuit breaker of `model` (checked when the model is resolved).
  public func breaker(for model: any ServableModel) -> CircuitBreaker {
    queue(for: model).breaker
  }

  /// Queues `inputs` for `model` on behalf of `principal` and returns its outputs once it has run (alone or in a
  /// batch).
  public func run(_ model: any ServableModel, inputs: [Tensor], requestedOutputs: [String]?, principal: String = "")
    async throws -> [Tensor]
  {
    try await queue(for: model).submit(inputs: inputs, requestedOutputs: requestedOutputs, principal: principal).outputs
  }

  /// Requests waiting, all models.
  public var queued: Int { slots.queued }
}

/// The server-wide execution and queue budget, shared by every model's queue.
final class ExecutionSlots: Sendable {
  struct State {
    var free: Int
    var queued = 0
    var byPrincipal: [String: Int] = [:]
    var waiting: Deque<ModelQueue> = []
  }
  /// Why a queue slot was refused.
  enum Refusal { case full, principalShare }
  private let state: Mutex<State>
  let queueLimit: Int
  let principalLimit: Int

  init(executions: Int, queueLimit: Int, principalLimit: Int) {
    state = Mutex(State(free: executions))
    self.queueLimit = queueLimit
    self.principalLimit = principalLimit
  }

  var queued: Int { state.withLock { $0.queued } }

  func reserveQueueSlot(principal: String) -> Refusal? {
    state.withLock { s in
      guard s.queued < queueLimit else { return .full }
      let held = s.byPrincipal[principal, default: 0]
      guard held < principalLimit else { return .principalShare }
      s.queued += 1
      s.byPrincipal[principal] = held + 1
      return nil
    }
  }

  func releaseQueueSlot(principal: String) {
    state.withLock { s in
      s.queued -= 1
      let held = s.byPrincipal[principal, default: 1] - 1
      s.byPrincipal[principal] = held > 0 ? held : nil
    }
  }

  /// Takes an execution slot, or registers `queue` to be pumped when one frees.
  func acquire(or queue: ModelQueue) -> Bool {
    state.withLock { s in
      if s.free > 0 {
        s.free -= 1
        return true
      }
      if !s.waiting.contains(where: { $0 === queue }) { s.waiting.append(queue) }
      return false
    }
  }

  /// Takes an execution slot if one is free now; never registers a waiter.
  func tryAcquire() -> Bool {
    state.withLock { s in
      guard s.free > 0 else { return false }
      s.free -= 1
      return true
    }
  }

  func release() {
    let next: ModelQueue? = state.withLock { s in
      s.free += 1
      return s.waiting.popFirst()
    }
    next?.pump()
  }
}

/// One model's queue, breaker and batching.
final class ModelQueue: Sendable {
  /// A request's outputs, and how long it waited in the queue before its execution started (zero when it ran
  /// directly on an idle model): the pipeline times that wait as its own stage.
  struct Completed: Sendable {
    var outputs: [Tensor]
    var waited: Duration
  }
  struct Entry {
    let id: UInt64
    let principal: String
    let inputs: [Tensor]
    let requested: [String]?
    let rows: Int?
    let key: [[Int64]]
    let enqueued: ContinuousClock.Instant
    let continuation: CheckedContinuation<Completed, any Error>
  }
  struct State {
    var pending: Deque<Entry> = []
    var byPrincipal: [String: Int] = [:]
    var running = 0
    var timerArmed = false
    var nextID: UInt64 = 0
  }

  let model: any ServableModel
  let breaker: CircuitBreaker
  let batchable: Bool
  let maxBatch: Int
  let scheduler: Scheduler
  private let state = Mutex(State())
  private let depth: @Sendable (Int) -> Void
  private let batchSize: @Sendable (Int) -> Void

  init(model: any ServableModel, scheduler: Scheduler) {
    self.model = model
    self.scheduler = scheduler
    let d = model.descriptor
    let settings = scheduler.settings
    let name = d.name
    let metrics = scheduler.metrics
    breaker = CircuitBreaker(model: name, settings: settings.breaker) { state in
      metrics.setBreakerState(model: name, state: state)
    }
    metrics.setBreakerState(model: name, state: .closed)
    batchable =
      settings.batching && !d.inputs.isEmpty
      && (d.inputs + d.outputs).allSatisfy { $0.shape.first == -1 }
    maxBatch = min(settings.maxBatch, d.contract.maxBatch ?? settings.maxBatch)
    depth = metrics.queueDepthGauge(model: name)
    batchSize = metrics.batchSizeRecorder(model: name)
  }

  func submit(inputs: [Tensor], requestedOutputs: [String]?, principal: String) async throws -> Completed {
    // An idle model with nothing waiting runs the request here, in the caller's task: no queue entry, no task to
    // start, no continuation. Under load requests queue (and batch) as below.
    if let outputs = try await runDirectlyIfIdle(
      inputs: inputs, requestedOutputs: requestedOutputs, principal: principal)
    {
      return Completed(outputs: outputs, waited: .zero)
    }
    switch scheduler.slots.reserveQueueSlot(principal: principal) {
    case nil: break
    case .full:
      scheduler.metrics.recordRejection(reason: "queue_full")
      throw PalisadeError(.resourceExhausted, "server overloaded: request queue full; retry later")
    case .principalShare:
      scheduler.metrics.recordRejection(reason: "principal_queue_share")
      throw PalisadeError(
        .resourceExhausted,
        "too many of this caller's requests are waiting (its share of the queue is full); retry later")
    }
    let id = state.withLock { s -> UInt64 in
      s.nextID += 1
      return s.nextID
    }
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Completed, any Error>) in
        let entry = Entry(
          id: id, principal: principal, inputs: inputs, requested: requestedOutputs,
          rows: batchable ? TensorBatch.rows(inputs) : nil,
          key: TensorBatch.key(inputs), enqueued: .now, continuation: continuation)
        let admitted = state.withLock { s -> Result<Int, PalisadeError> in
          guard s.pending.count < scheduler.settings.modelQueueLimit else {
            return .failure(
              PalisadeError(
                .resourceExhausted,
                "model '\(model.descriptor.name.sanitizedForMessage)' overloaded: its queue is full; retry later"))
          }
          let held = s.byPrincipal[principal, default: 0]
          guard held < scheduler.settings.modelPrincipalQueueLimit else {
            return .failure(
              PalisadeError(
                .resourceExhausted,
                "too many of this caller's requests are waiting for model '\(model.descriptor.name.sanitizedForMessage)' (its share of the queue is full); retry later"
              ))
          }
          s.byPrincipal[principal] = held + 1
          s.pending.append(entry)
          return .success(s.pending.count)
        }
        let count: Int
        switch admitted {
        case .success(let n): count = n
        case .failure(let error):
          scheduler.slots.releaseQueueSlot(principal: principal)
          scheduler.metrics.recordRejection(
            reason: error.message.contains("share") ? "principal_queue_share" : "queue_full")
          continuation.resume(throwing: error)
          return
        }
        depth(count)
        // Cancelled before it was queued: the cancellation handler found nothing to remove.
        if Task.isCancelled { cancel(id) }
        pump()
      }
    } onCancel: {
      cancel(id)
    }
  }

  /// Removes a waiting request whose RPC was cancelled or ran out of time.
  private func cancel(_ id: UInt64) {
    let removed: (Entry, Int)? = state.withLock { s in
      guard let i = s.pending.firstIndex(where: { $0.id == id }) else { return nil }
      let entry = s.pending.remove(at: i)
      Self.forget(entry, in: &s)
      return (entry, s.pending.count)
    }
    guard let (entry, count) = removed else { return }
    scheduler.slots.releaseQueueSlot(principal: entry.principal)
    depth(count)
    scheduler.metrics.recordRejection(reason: "deadline_in_queue")
    entry.continuation.resume(
      throwing: PalisadeError(.deadlineExceeded, "deadline exceeded while queued; the request was not run"))
  }

  /// Starts every execution the limits allow.
  func pump() {
    while true {
      var batch: [Entry] = []
      var timer: Duration? = nil
      var remaining = 0
      state.withLock { s in
        guard let head = s.pending.first, s.running < scheduler.settings.modelMaxConcurrentExecutions else { return }
        var rows = 0
        var n = 0
        if let headRows = head.rows, headRows < maxBatch {
          for e in s.pending {
            guard let r = e.rows, e.key == head.key, rows + r <= maxBatch else { break }
            rows += r
            n += 1
          }
        } else {
          n = 1
          rows = maxBatch
        }
        let waited = ContinuousClock.now - head.enqueued
        if head.rows != nil, rows < maxBatch, s.running > 0, waited < scheduler.settings.maxDelay {
          if !s.timerArmed {
            s.timerArmed = true
            timer = scheduler.settings.maxDelay - waited
          }
          return
        }
        guard scheduler.slots.acquire(or: self) else { return }
        for _ in 0..<n {
          if let e = s.pending.popFirst() {
            Self.forget(e, in: &s)
            batch.append(e)
          }
        }
        s.running += 1
        remaining = s.pending.count
      }
      if let timer {
        Task {
          try? await Task.sleep(for: timer)
          self.state.withLock { $0.timerArmed = false }
          self.pump()
        }
        return
      }
      guard !batch.isEmpty else { return }
      for entry in batch { scheduler.slots.releaseQueueSlot(principal: entry.principal) }
      depth(remaining)
      let work = batch
      Task { await self.execute(work) }
    }
  }

  /// Runs at once when the model is idle and nothing waits; nil when it is not (the request then queues).
  private func runDirectlyIfIdle(inputs: [Tensor], requestedOutputs: [String]?, principal: String) async throws
    -> [Tensor]?
  {
    let claimed = state.withLock { s -> Bool in
      guard s.pending.isEmpty, s.running == 0 else { return false }
      guard scheduler.slots.tryAcquire() else { return false }
      s.running += 1
      return true
    }
    guard claimed else { return nil }
    batchSize(1)
    defer {
      state.withLock { $0.running -= 1 }
      scheduler.slots.release()
      pump()
    }
    let started = ContinuousClock.now
    do {
      let outputs = try await scheduler.executor.run(model, inputs: inputs, requestedOutputs: requestedOutputs)
      breaker.record(.success, duration: ContinuousClock.now - started)
      return outputs
    } catch {
      breaker.record(CircuitBreaker.Outcome(error), principal: principal, duration: ContinuousClock.now - started)
      throw error
    }
  }

  private static func forget(_ entry: Entry, in s: inout State) {
    let held = s.byPrincipal[entry.principal, default: 1] - 1
    s.byPrincipal[entry.principal] = held > 0 ? held : nil
  }

  private func execute(_ batch: [Entry]) async {
    batchSize(batch.count)
    if batch.count == 1, let entry = batch.first {
      await runAlone(entry)
    } else {
      let started = ContinuousClock.now
      do {
        let merged = try TensorBatch.concatenate(batch.map(\.inputs))
        let outputs = try await scheduler.executor.run(model, inputs: merged, requestedOutputs: nil)
        let parts = try TensorBatch.split(outputs, rows: batch.map { $0.rows ?? 0 })
        breaker.record(.success, duration: ContinuousClock.now - started)
        for (entry, part) in zip(batch, parts) {
          entry.continuation.resume(returning: Completed(outputs: part, waited: started - entry.enqueued))
        }
      } catch {
        // One request of the batch may be what made the model fail: run each alone, so that every caller gets
        // its own outcome and only the model's own failures reach the breaker.
        for entry in batch { await runAlone(entry) }
      }
    }
    state.withLock { $0.running -= 1 }
    scheduler.slots.release()
    pump()
  }

  private func runAlone(_ entry: Entry) async {
    let started = ContinuousClock.now
    do {
      let outputs = try await scheduler.executor.run(model, inputs: entry.inputs, requestedOutputs: entry.requested)
      breaker.record(.success, duration: ContinuousClock.now - started)
      entry.continuation.resume(returning: Completed(outputs: outputs, waited: started - entry.enqueued))
    } catch {
      breaker.record(CircuitBreaker.Outcome(error), principal: entry.principal, duration: ContinuousClock.now - started)
      entry.continuation.resume(throwing: error)
    }
  }
}

extension CircuitBreaker.Outcome {
  /// Classifies an execution error: only what the model or its runtime did wrong counts against it. Errors that
  /// describe the request (invalid argument, limits) or the caller (cancellation, deadline) do not.
  init(_ error: any Error) {
    guard let error = error as? PalisadeError else {
      self = error is CancellationError ? .notCounted : .modelFailure
      return
    }
    switch error.code {
    case .internal, .unavailable, .unimplemented: self = .modelFailure
    case .invalidArgument, .deadlineExceeded, .resourceExhausted, .permissionDenied, .unauthenticated, .notFound,
      .failedPrecondition:
      self = .notCounted
    }
  }
}
