import NIOCore

/// Runs a task's jobs on a connection's event loop, so that a fast-path call whose work never suspends elsewhere
/// (a small model computed inline) is served on the thread that read it: no wake-up of a concurrency-pool thread
/// to start the call and none of the event loop to write its answer. Anything the call awaits on another executor
/// (an actor, the worker pool) still runs there and comes back here.
final class EventLoopTaskExecutor: TaskExecutor, Sendable {
  let loop: any EventLoop

  init(_ loop: any EventLoop) { self.loop = loop }

  func enqueue(_ job: consuming ExecutorJob) {
    let job = UnownedJob(job)
    loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
  }
}
