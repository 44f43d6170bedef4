import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Errors from ``WorkerPool``.
public enum WorkerPoolError: Error, Sendable, Equatable {
  /// The pool was shut down before the submitted work could run.
  case shutDown
}

/// A fixed set of compute threads, created once, shared by all kernels.
///
/// - ``parallelFor(_:context:_:)`` runs `function(context, i)` over `0..<count` on the calling thread plus idle
///   pool threads and returns when every index is done. It allocates nothing and creates no thread (this is
///   what ``sgemm`` uses). ``parallelFor(_:_:)`` is the closure form for convenience; it costs one small heap
///   box per call (Swift boxes a closure whose lifetime it cannot see). If the pool is already busy with
///   another `parallelFor` (a concurrent caller, or a nested call), the work runs serially on the calling
///   thread instead of queueing, so nested and concurrent use can never deadlock.
/// - Idle workers that just did work spin for ~10 us before sleeping, so back-to-back parallel ops of one
///   inference do not pay a futex wake-up each; only as many sleeping workers are woken as there are parts.
/// - ``run(_:)`` is the entry point for Swift concurrency: the closure runs on a pool thread and the calling task
///   is suspended (not blocked), so the cooperative thread pool stays free.
///
/// Large GEMMs called with a pool split their output into one block per thread (see ``sgemm``).
public final class WorkerPool: @unchecked Sendable {
  /// Number of compute threads owned by the pool (the caller of `parallelFor` joins them).
  public let threadCount: Int
  private let core: PoolCore

  /// A process-wide pool sized to the CPUs this process may run on.
  public static let shared = WorkerPool()

  /// Creates the pool and starts its threads.
  /// - Parameter threadCount: number of threads; `nil` means one per CPU in the process's affinity mask.
  ///   Values below 1 are treated as 1.
  public init(threadCount: Int? = nil) {
    let wanted = max(1, threadCount ?? WorkerPool.availableCores())
    core = PoolCore()
    var started = 0
    for index in 0..<wanted {
      if core.startThread(index: index) { started += 1 }
    }
    // If the OS refuses threads we degrade to fewer (possibly zero: callers then run serially).
    self.threadCount = max(1, started)
  }

  deinit {
    core.shutdown()
  }

  /// Number of online CPUs, at least 1. (Container CPU quotas are not consulted: pass `threadCount`.)
  public static func availableCores() -> Int {
    max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
  }

  /// Calls `body(i)` for every `i` in `0..<count`, spreading indices over the calling thread and idle pool
  /// threads, and returns when all calls have finished.
  ///
  /// Different indices run concurrently: `body` must only write memory no other index touches.
  public func parallelFor(_ count: Int, _ body: (Int) -> Void) {
    if count <= 0 { return }
    if count == 1 || threadCount <= 1 {
      for i in 0..<count { body(i) }
      return
    }
    // The job slot stores a C function pointer plus a pointer to the closure on this stack frame, not the
    // closure itself: storing a closure in the pool would box it on the heap on every call.
    withoutActuallyEscaping(body) { escapable in
      var box = ClosureBox(body: escapable)
      withUnsafePointer(to: &box) { pointer in
        core.runParallel(count: count, context: UnsafeRawPointer(pointer)) { context, index in
          context.assumingMemoryBound(to: ClosureBox.self).pointee.body(index)
        }
      }
    }
  }

  /// Allocation-free form for hot paths: calls `function(context, i)` for every `i` in `0..<count`, spread over
  /// the calling thread and idle pool threads, and returns when all calls have finished. `function` cannot
  /// capture anything; pass state through `context` (typically a pointer to a struct on the caller's stack).
  public func parallelFor(
    _ count: Int, context: UnsafeRawPointer,
    _ function: @convention(c) (_ context: UnsafeRawPointer, _ index: Int) -> Void
  ) {
    if count <= 0 { return }
    if count == 1 || threadCount <= 1 {
      for i in 0..<count { function(context, i) }
      return
    }
    core.runParallel(count: count, context: context, function: function)
  }

  /// Runs `body` on a pool thread and resumes the calling task with its result, without blocking a
  /// cooperative-pool thread. `body` may itself call ``parallelFor(_:_:)`` (for example via ``sgemm``).
  public func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
      let accepted = core.submit {
        continuation.resume(with: Result { try body() })
      }
      if !accepted { continuation.resume(throwing: WorkerPoolError.shutDown) }
    }
  }
}

private struct ClosureBox {
  let body: (Int) -> Void
}

/// State shared between the pool object and its threads, guarded by one pthread mutex.
private final class PoolCore: @unchecked Sendable {
  private let mutex: UnsafeMutablePointer<pthread_mutex_t>
  private let workAvailable: UnsafeMutablePointer<pthread_cond_t>
  private let jobFinished: UnsafeMutablePointer<pthread_cond_t>
  private var threads: [pthread_t] = []

  // Guarded by `mutex`.
  private var jobActive = false
  private var jobFunction: (@convention(c) (UnsafeRawPointer, Int) -> Void)?
  private var jobContext: UnsafeRawPointer?
  private var jobCount = 0
  private var jobNext = 0
  private var jobUnfinished = 0
  private var tasks: [@Sendable () -> Void] = []
  private var taskHead = 0
  private var stopping = false
  private var sleepers = 0
  private var spinners = 0
  /// Bumped (under the mutex) whenever work is posted, so idle workers can spin on it without the lock.
  private let generation = Atomic<Int>(0)
  /// `jobUnfinished`, mirrored (stored under the mutex) so the caller can wait for the last parts without it.
  private let unfinished = Atomic<Int>(0)

  /// How long (ns) an idle worker polls for new work before sleeping on the condition variable. Inference
  /// runs many small parallel ops back to back, and waking a sleeping thread costs tens of microseconds; a
  /// longer spin would steal the core from the thread doing the work when the caller is outside the pool.
  private static let spinNanoseconds = 10_000
  /// How long the caller of `runParallel` polls for the workers' last parts before sleeping.
  private static let callerSpinNanoseconds = 50_000

  init() {
    mutex = .allocate(capacity: 1)
    mutex.initialize(to: pthread_mutex_t())
    pthread_mutex_init(mutex, nil)
    workAvailable = .allocate(capacity: 1)
    workAvailable.initialize(to: pthread_cond_t())
    pthread_cond_init(workAvailable, nil)
    jobFinished = .allocate(capacity: 1)
    jobFinished.initialize(to: pthread_cond_t())
    pthread_cond_init(jobFinished, nil)
    tasks.reserveCapacity(64)
  }

  deinit {
    pthread_cond_destroy(jobFinished)
    pthread_cond_destroy(workAvailable)
    pthread_mutex_destroy(mutex)
    jobFinished.deallocate()
    workAvailable.deallocate()
    mutex.deallocate()
  }

  private final class ThreadStart {
    let core: PoolCore
    let index: Int
    init(core: PoolCore, index: Int) {
      self.core = core
      self.index = index
    }
  }

  func startThread(index: Int) -> Bool {
    let context = Unmanaged.passRetained(ThreadStart(core: self, index: index)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(
      &thread, nil,
      { raw in
        guard let raw else { return nil }
        let start = Unmanaged<ThreadStart>.fromOpaque(raw).takeRetainedValue()
        start.core.workerLoop(index: start.index)
        return nil
      }, context)
    if rc != 0 {
      Unmanaged<ThreadStart>.fromOpaque(context).release()
      return false
    }
    threads.append(thread)
    return true
  }

  func shutdown() {
    pthread_mutex_lock(mutex)
    stopping = true
    generation.add(1, ordering: .releasing)
    pthread_cond_broadcast(workAvailable)
    pthread_mutex_unlock(mutex)
    for thread in threads { pthread_join(thread, nil) }
    threads.removeAll()
  }

  /// A name of its own (a thread inherits its creator's, an event loop's), so `top -H` and `perf` tell the workers
  /// apart. Written to `/proc/thread-self/comm`: glibc's `pthread_setname_np` is not visible to Swift here.
  private static func nameThisThread(_ name: String) {
    #if os(Linux)
      let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
      guard fd >= 0 else { return }
      var bytes = Array(name.utf8.prefix(15))
      _ = write(fd, &bytes, bytes.count)
      close(fd)
    #endif
  }

  private func workerLoop(index: Int) {
    Self.nameThisThread("palisade-kern-\(index % 100)")
    // Allocate this thread's packing buffers now, not on the first inference.
    GemmScratch.warmUp()
    pthread_mutex_lock(mutex)
    // Only a worker that just did work spins: it is likely to be needed for the next op of the same
    // inference. Others sleep at once, so a caller outside the pool plus `threadCount` workers never put
    // more busy threads than cores on the CPU.
    var hot = false
    while true {
      if jobActive, jobNext < jobCount, let function = jobFunction, let context = jobContext {
        let i = jobNext
        jobNext += 1
        pthread_mutex_unlock(mutex)
        function(context, i)
        pthread_mutex_lock(mutex)
        jobUnfinished -= 1
        unfinished.store(jobUnfinished, ordering: .releasing)
        if jobUnfinished == 0 { pthread_cond_signal(jobFinished) }
        hot = true
        continue
      }
      if taskHead < tasks.count {
        let task = tasks[taskHead]
        taskHead += 1
        if taskHead == tasks.count {
          tasks.removeAll(keepingCapacity: true)
          taskHead = 0
        }
        pthread_mutex_unlock(mutex)
        task()
        pthread_mutex_lock(mutex)
        hot = true
        continue
      }
      if stopping { break }
      if hot {
        // Spin briefly (without the lock) for the next job before paying for a futex sleep and wake-up.
        hot = false
        let seen = generation.load(ordering: .acquiring)
        spinners += 1
        pthread_mutex_unlock(mutex)
        let deadline = monotonicNanoseconds() + PoolCore.spinNanoseconds
        var changed = false
        spin: while true {
          for _ in 0..<64 {
            if generation.load(ordering: .relaxed) != seen {
              changed = true
              break spin
            }
            spinPause()
          }
          if monotonicNanoseconds() >= deadline { break }
        }
        pthread_mutex_lock(mutex)
        spinners -= 1
        if changed || generation.load(ordering: .acquiring) != seen { continue }
      }
      sleepers += 1
      pthread_cond_wait(workAvailable, mutex)
      sleepers -= 1
    }
    pthread_mutex_unlock(mutex)
  }

  /// Runs `function(context, i)` for `i < count` on the caller and idle workers; returns when all are done.
  func runParallel(
    count: Int, context: UnsafeRawPointer, function: @convention(c) (UnsafeRawPointer, Int) -> Void
  ) {
    pthread_mutex_lock(mutex)
    if jobActive || stopping {
      // Busy (nested or concurrent caller): do it ourselves rather than wait.
      pthread_mutex_unlock(mutex)
      for i in 0..<count { function(context, i) }
      return
    }
    jobActive = true
    jobFunction = function
    jobContext = context
    jobCount = count
    jobNext = 0
    jobUnfinished = count
    unfinished.store(count, ordering: .releasing)
    generation.add(1, ordering: .releasing)
    // The caller takes a share itself; spinning workers will see the new generation; wake only the rest.
    wake(count - 1 - spinners)
    while jobNext < jobCount {
      let i = jobNext
      jobNext += 1
      pthread_mutex_unlock(mutex)
      function(context, i)
      pthread_mutex_lock(mutex)
      jobUnfinished -= 1
      unfinished.store(jobUnfinished, ordering: .releasing)
    }
    if jobUnfinished > 0 {
      // The last parts are on workers: poll briefly before sleeping, since a futex sleep and wake-up of the
      // caller costs more than a typical straggler (on this class of VM, tens of microseconds per step).
      pthread_mutex_unlock(mutex)
      let deadline = monotonicNanoseconds() + PoolCore.callerSpinNanoseconds
      spin: while true {
        for _ in 0..<64 {
          if unfinished.load(ordering: .acquiring) == 0 { break spin }
          spinPause()
        }
        if monotonicNanoseconds() >= deadline { break }
      }
      pthread_mutex_lock(mutex)
    }
    while jobUnfinished > 0 { pthread_cond_wait(jobFinished, mutex) }
    jobActive = false
    jobFunction = nil
    jobContext = nil
    pthread_mutex_unlock(mutex)
  }

  /// Wakes up to `wanted` sleeping workers. Caller holds the mutex.
  private func wake(_ wanted: Int) {
    var n = min(wanted, sleepers)
    while n > 0 {
      pthread_cond_signal(workAvailable)
      n -= 1
    }
  }

  func submit(_ task: @escaping @Sendable () -> Void) -> Bool {
    pthread_mutex_lock(mutex)
    defer { pthread_mutex_unlock(mutex) }
    if stopping || threads.isEmpty { return false }
    tasks.append(task)
    generation.add(1, ordering: .releasing)
    wake(tasks.count - taskHead - spinners)
    return true
  }
}

@inline(__always)
private func monotonicNanoseconds() -> Int {
  var ts = timespec()
  clock_gettime(CLOCK_MONOTONIC, &ts)
  return Int(ts.tv_sec) &* 1_000_000_000 &+ Int(ts.tv_nsec)
}

// The CPU's spin-wait hint (x86 `pause`, arm64 `yield`), through LLVM intrinsics since Swift exposes neither:
// it saves power and frees pipeline resources while polling.
// (Same sanitizer caveat as `llvmPrefetch` in Gemm.swift.)
#if DEBUG || PALISADE_NO_LLVM_INTRINSICS
  @inline(__always) private func spinPause() {}
#elseif arch(x86_64)
  @_silgen_name("llvm.x86.sse2.pause")
  private func llvmPause()
  @inline(__always) private func spinPause() { llvmPause() }
#elseif arch(arm64)
  @_silgen_name("llvm.aarch64.hint")
  private func llvmHint(_ hint: Int32)
  @inline(__always) private func spinPause() { llvmHint(1) }
#else
  @inline(__always) private func spinPause() {}
#endif

/// Runs `body` over `0..<count` split into up to `threadCount + 1` contiguous ranges on `pool` (the calling thread
/// joins), or as one range on the calling thread without a pool, with one thread, or for fewer than 2^15 units of
/// `work` (below that the wake-ups cost more than they save).
func parallelRanges(_ count: Int, work: Int, pool: WorkerPool?, _ body: (Range<Int>) -> Void) {
  guard let pool, pool.threadCount > 1, work >= 1 << 15, count > 1 else {
    body(0..<count)
    return
  }
  let parts = min(count, pool.threadCount + 1)
  pool.parallelFor(parts) { part in
    let lo = count * part / parts
    let hi = count * (part + 1) / parts
    if lo < hi { body(lo..<hi) }
  }
}
