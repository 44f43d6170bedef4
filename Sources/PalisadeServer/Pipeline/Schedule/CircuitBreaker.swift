import Foundation
public import PalisadeCore
import Synchronization

/// A per-model circuit breaker: after `failureThreshold` consecutive failed (or too slow) executions the circuit
/// opens and calls fail fast with UNAVAILABLE for `openDuration`; then it is half-open and lets
/// `halfOpenProbes` calls through; a success closes it, a failure opens it again.
public final class CircuitBreaker: Sendable {
  public struct Settings: Sendable, Equatable {
    public var failureThreshold: Int
    public var openDuration: Duration
    public var halfOpenProbes: Int
    /// An execution longer than this counts as a failure (its result is still returned); nil: never.
    public var slowCall: Duration?
    public init(failureThreshold: Int = 5, openDuration: Duration = .seconds(10), halfOpenProbes: Int = 1, slowCall: Duration? = nil) {
      self.failureThreshold = failureThreshold
      self.openDuration = openDuration
      self.halfOpenProbes = halfOpenProbes
      self.slowCall = slowCall
    }
    public static let defaults = Settings()
  }

  public enum State: String, Sendable {
    case closed, open
    case halfOpen = "half_open"
    /// The gauge value: 0 closed, 1 half-open, 2 open.
    public var gaugeValue: Double {
      switch self {
      case .closed: 0
      case .halfOpen: 1
      case .open: 2
      }
    }
  }

  struct Inner: Sendable {
    var state: State = .closed
    var failures = 0
    var openedAt: ContinuousClock.Instant? = nil
    var probes = 0
  }

  public let settings: Settings
  let model: String
  private let inner = Mutex(Inner())
  private let onChange: @Sendable (State) -> Void

  public init(model: String, settings: Settings, onChange: @escaping @Sendable (State) -> Void = { _ in }) {
    self.model = model
    self.settings = settings
    self.onChange = onChange
  }

  public var state: State { inner.withLock { $0.state } }

  /// Lets a call through, or refuses it with UNAVAILABLE while the circuit is open.
  public func admit(now: ContinuousClock.Instant = .now) throws(PalisadeError) {
    var changed: State? = nil
    let retry: Duration? = inner.withLock { s in
      switch s.state {
      case .closed: return nil
      case .open:
        let openedAt = s.openedAt ?? now
        let elapsed = now - openedAt
        if elapsed < settings.openDuration { return settings.openDuration - elapsed }
        s.state = .halfOpen
        s.probes = 1
        changed = .halfOpen
        return nil
      case .halfOpen:
        if s.probes < settings.halfOpenProbes {
          s.probes += 1
          return nil
        }
        return .milliseconds(100)
      }
    }
    if let changed { onChange(changed) }
    if let retry {
      let seconds = Double(retry.components.seconds) + Double(retry.components.attoseconds) / 1e18
      throw PalisadeError(
        .unavailable,
        "model '\(model.sanitizedForMessage)' is failing and temporarily refused (circuit open); retry after \(String(format: "%.1f", max(0.1, seconds)))s")
    }
  }

  /// Records the outcome of an execution that ``admit(now:)`` let through.
  public func record(success: Bool, duration: Duration = .zero, now: ContinuousClock.Instant = .now) {
    let failed = !success || (settings.slowCall.map { duration > $0 } ?? false)
    let changed: State? = inner.withLock { s in
      switch (s.state, failed) {
      case (.closed, false):
        s.failures = 0
        return nil
      case (.closed, true):
        s.failures += 1
        guard s.failures >= settings.failureThreshold else { return nil }
        s.state = .open
        s.openedAt = now
        return .open
      case (.halfOpen, false):
        s.state = .closed
        s.failures = 0
        s.probes = 0
        return .closed
      case (.halfOpen, true), (.open, true):
        s.state = .open
        s.openedAt = now
        s.probes = 0
        return .open
      case (.open, false):
        return nil
      }
    }
    if let changed { onChange(changed) }
  }
}
