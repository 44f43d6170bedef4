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

    public init(
      maxConcurrentExecutions: Int = ProcessInfo.processInfo.activeProcessorCount,
      modelMaxConcurrentExecutions: Int = ProcessInfo.processInfo.activeProcessorCount, queueLimit: Int = 512,
      modelQueueLimit: Int = 256, batching: Bool = true, maxBatch: Int = 32, maxDelay: Duration = .microseconds(300),
      breaker: CircuitBreaker.Settings = .defaults
    ) {
      self.maxConcurrentExecutions = max(1, maxConcurrentExecutions)
      self.modelMaxConcurrentExecutions = max(1, modelMaxConcurrentExecutions)
      self.queueLimit = max(1, queueLimit)
      self.modelQueueLimit = max(1, modelQueueLimit)
      self.batching = batching
      self.maxBatch = max(1, maxBatch)
      self.maxDelay = maxDelay
      self.breaker = breaker
    }
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
    self.slots = ExecutionSlots(executions: settings.maxConcurrentExecutions, queueLimit: settings.queueLimit)
  }

  /// The queue of `model`, made on first use. Keyed by name, version and bundle digest, so a reloaded bundle gets
  /// a fresh queue and breaker.
  func queue(for model: any ServableModel) -> ModelQueue {
    let d = model.descriptor
    let key = "\(d.name)\u{0}\(d.version)\u{0}\(d.properties["bundle_digest"] ?? "")"
    return queues.withLock { q in
      if let existing = q[key] { return existing }
      let made = ModelQueue(model: model, scheduler: self)
      q[key] = made
      return made
    }
  }

  /// The circuit breaker of `model` (checked when the model is resolved).
  public func breaker(for model: any ServableModel) -> CircuitBreaker {
    queue(for: model).breaker
  }

  /// Queues `inputs` for `model` and returns its outputs once it has run (alone or in a batch).
  public func run(_ model: any ServableModel, inputs: [Tensor], requestedOutputs: [String]?) async throws -> [Tensor] {
    try await queue(for: model).submit(inputs: inputs, requestedOutputs: requestedOutputs)
  }

  /// Requests waiting, all models.
  public var queued: Int { slots.queued }
}

/// The server-wide execution and queue budget, shared by every model's queue.
final class ExecutionSlots: Sendable {
  struct State {
    var free: Int
    var queued = 0
    var waiting: Deque<ModelQueue> = []
  }
  private let state: Mutex<State>
  let queueLimit: Int

  init(executions: Int, queueLimit: Int) {
    state = Mutex(State(free: executions))
    self.queueLimit = queueLimit
  }

  var queued: Int { state.withLock { $0.queued } }

  func reserveQueueSlot() -> Bool {
    state.withLock { s in
      guard s.queued < queueLimit else { return false }
      s.queued += 1
      return true
    }
  }

  func releaseQueueSlots(_ n: Int) { state.withLock { $0.queued -= n } }

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
  struct Entry {
    let id: UInt64
    let inputs: [Tensor]
    let requested: [String]?
    let rows: Int?
    let key: [[Int64]]
    let enqueued: ContinuousClock.Instant
    let continuation: CheckedContinuation<[Tensor], any Error>
  }
  struct State {
    var pending: Deque<Entry> = []
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

  func submit(inputs: [Tensor], requestedOutputs: [String]?) async throws -> [Tensor] {
    guard scheduler.slots.reserveQueueSlot() else {
      throw PalisadeError(.resourceExhausted, "server overloaded: request queue full; retry later")
    }
    let id = state.withLock { s -> UInt64 in
      s.nextID += 1
      return s.nextID
    }
    return try await withTaskCancellationHandler {
      try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[Tensor], any Error>) in
        let entry = Entry(
          id: id, inputs: inputs, requested: requestedOutputs, rows: batchable ? TensorBatch.rows(inputs) : nil,
          key: TensorBatch.key(inputs), enqueued: .now, continuation: continuation)
        let admitted = state.withLock { s -> Int? in
          guard s.pending.count < scheduler.settings.modelQueueLimit else { return nil }
          s.pending.append(entry)
          return s.pending.count
        }
        guard let count = admitted else {
          scheduler.slots.releaseQueueSlots(1)
          continuation.resume(throwing: PalisadeError(.resourceExhausted, "model '\(model.descriptor.name.sanitizedForMessage)' overloaded: its queue is full; retry later"))
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
      return (s.pending.remove(at: i), s.pending.count)
    }
    guard let (entry, count) = removed else { return }
    scheduler.slots.releaseQueueSlots(1)
    depth(count)
    scheduler.metrics.recordRejection(reason: "deadline_in_queue")
    entry.continuation.resume(throwing: PalisadeError(.deadlineExceeded, "deadline exceeded while queued; the request was not run"))
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
        for _ in 0..<n { if let e = s.pending.popFirst() { batch.append(e) } }
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
      scheduler.slots.releaseQueueSlots(batch.count)
      depth(remaining)
      let work = batch
      Task { await self.execute(work) }
    }
  }

  private func execute(_ batch: [Entry]) async {
    let started = ContinuousClock.now
    var success = true
    batchSize(batch.count)
    do {
      if batch.count == 1, let entry = batch.first {
        let outputs = try await scheduler.executor.run(model, inputs: entry.inputs, requestedOutputs: entry.requested)
        entry.continuation.resume(returning: outputs)
      } else {
        let merged = try TensorBatch.concatenate(batch.map(\.inputs))
        let outputs = try await scheduler.executor.run(model, inputs: merged, requestedOutputs: nil)
        let parts = try TensorBatch.split(outputs, rows: batch.map { $0.rows ?? 0 })
        for (entry, part) in zip(batch, parts) { entry.continuation.resume(returning: part) }
      }
    } catch {
      success = false
      for entry in batch { entry.continuation.resume(throwing: error) }
    }
    breaker.record(success: success, duration: ContinuousClock.now - started)
    state.withLock { $0.running -= 1 }
    scheduler.slots.release()
    pump()
  }
}
