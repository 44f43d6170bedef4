import Synchronization

/// Bounds how often `/metrics` is rendered (the server's admin port and the sidecar's). Nobody authenticates there,
/// and a render walks every metric: a client asking as fast as answers come back (thousands a second) would take
/// CPU from the work the process is for (inference, egress). Within
/// one second, the first `perSecond` requests get a fresh render; the rest get the last render again (at most a
/// second old), which a scraper polling every few seconds never sees.
public final class MetricsRenderBudget: Sendable {
  private struct State {
    var windowStart: ContinuousClock.Instant
    var renders = 0
    var last: [UInt8]?
  }

  private let perSecond: Int
  private let now: @Sendable () -> ContinuousClock.Instant
  private let state: Mutex<State>

  /// `now` is the clock, for tests.
  public init(perSecond: Int, now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
    self.perSecond = max(1, perSecond)
    self.now = now
    self.state = Mutex(State(windowStart: now()))
  }

  /// The body to answer with, and whether it was rendered for this request (false: the last render, again).
  public func body(render: () -> [UInt8]) -> (bytes: [UInt8], fresh: Bool) {
    let t = now()
    let cached = state.withLock { s -> [UInt8]? in
      if t - s.windowStart >= .seconds(1) {
        s.windowStart = t
        s.renders = 0
      }
      if s.renders >= perSecond, let last = s.last { return last }
      s.renders += 1
      return nil
    }
    if let cached { return (cached, false) }
    // Rendered outside the lock: concurrent requests within the budget do not wait for each other.
    let bytes = render()
    state.withLock { $0.last = bytes }
    return (bytes, true)
  }
}
