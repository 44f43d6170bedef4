import Foundation
public import PalisadeCore
import Synchronization

/// A per-model circuit breaker: after `failureThreshold` consecutive failed (or too slow) executions the circuit
/// opens and calls fail fast with UNAVAILABLE for `openDuration`; then it is half-open and lets
/// `halfOpenProbes` calls through; a success closes it, a failure opens it again.
///
/// No caller can take a model down for the others:
/// - only the model's own failures count (see ``Outcome``): a caller's bad request, a cancellation or a caller's
///   deadline never moves the breaker;
/// - when the consecutive failures all came from one principal, the circuit opens for that principal only (its
///   requests are what fails); it opens for everyone only when at least two principals' requests failed;
/// - the same holds for half-open probes: a failed probe shuts that principal out and hands the probe on; the
///   circuit opens again for everyone only when probes of two principals failed (one caller whose requests make
///   the model fail could otherwise keep it closed to everyone by always taking the probe);
/// - a half-open probe that ends without reaching the model (refused in validation, cancelled in the queue) hands
///   its probe back through ``release(_:)``, so a probe can never be held by a request that will not run.
public final class CircuitBreaker: Sendable {
  public struct Settings: Sendable, Equatable {
    public var failureThreshold: Int
    public var openDuration: Duration
    public var halfOpenProbes: Int
    /// An execution longer than this counts as a failure (its result is still returned); nil: never.
    public var slowCall: Duration?
    public init(
      failureThreshold: Int = 5, openDuration: Duration = .seconds(10), halfOpenProbes: Int = 1,
      slowCall: Duration? = nil
    ) {
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

  /// What ``admit(principal:now:)`` granted: an ordinary pass, or one of the half-open probes (returned by
  /// ``release(_:)``).
  public enum Permit: Sendable, Equatable {
    case pass
    case probe
  }

  /// How an execution ended, from the model's point of view.
  public enum Outcome: Sendable, Equatable {
    /// The model answered.
    case success
    /// The model (or its runtime) failed: counts toward opening the circuit.
    case modelFailure
    /// Not the model's doing (the caller's input, cancellation, the caller's deadline): not counted.
    case notCounted
  }

  struct Inner: Sendable {
    var state: State = .closed
    var failures = 0
    /// The principals whose requests make up the current run of failures (at most two are needed).
    var failing: Set<String> = []
    var openedAt: ContinuousClock.Instant? = nil
    var probes = 0
    /// Principals whose half-open probes failed (at most two are needed).
    var failedProbes: Set<String> = []
    /// Principals for whom alone the circuit is open, and since when.
    var openFor: [String: ContinuousClock.Instant] = [:]

    /// Opens the circuit for `principal` alone, keeping at most ``CircuitBreaker/maxPrincipalCircuits`` of them
    /// (expired ones are dropped first, then all if that is not enough).
    mutating func shutOut(_ principal: String, now: ContinuousClock.Instant, openDuration: Duration) {
      if openFor.count >= CircuitBreaker.maxPrincipalCircuits {
        openFor = openFor.filter { now - $0.value < openDuration }
        if openFor.count >= CircuitBreaker.maxPrincipalCircuits { openFor.removeAll() }
      }
      openFor[principal] = now
    }
  }

  /// Principals tracked with a circuit of their own at once; beyond it the oldest are forgotten.
  static let maxPrincipalCircuits = 10_000

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

  /// Lets a call through, or refuses it with UNAVAILABLE while the circuit is open (for everyone, or for
  /// `principal`).
  @discardableResult
  public func admit(principal: String = "", now: ContinuousClock.Instant = .now) throws(PalisadeError) -> Permit {
    var changed: State? = nil
    var permit = Permit.pass
    var scopedToCaller = false
    let retry: Duration? = inner.withLock { s in
      if !s.openFor.isEmpty, let since = s.openFor[principal] {
        let elapsed = now - since
        if elapsed < settings.openDuration {
          scopedToCaller = true
          return settings.openDuration - elapsed
        }
        s.openFor[principal] = nil
      }
      switch s.state {
      case .closed: return nil
      case .open:
        let openedAt = s.openedAt ?? now
        let elapsed = now - openedAt
        if elapsed < settings.openDuration { return settings.openDuration - elapsed }
        s.state = .halfOpen
        s.probes = 1
        changed = .halfOpen
        permit = .probe
        return nil
      case .halfOpen:
        if s.probes < settings.halfOpenProbes {
          s.probes += 1
          permit = .probe
          return nil
        }
        return .milliseconds(100)
      }
    }
    if let changed { onChange(changed) }
    if let retry {
      let seconds = Double(retry.components.seconds) + Double(retry.components.attoseconds) / 1e18
      let whose = scopedToCaller ? "is failing on this caller's requests" : "is failing"
      throw PalisadeError(
        .unavailable,
        "model '\(model.sanitizedForMessage)' \(whose) and temporarily refused (circuit open); retry after \(String(format: "%.1f", max(0.1, seconds)))s"
      )
    }
    return permit
  }

  /// Hands back a half-open probe when its call ended without an outcome that moved the breaker (the call was
  /// refused before the model, or cancelled). Harmless for ordinary passes and after the probe's outcome was
  /// recorded (recording leaves half-open and resets the probes).
  public func release(_ permit: Permit) {
    guard permit == .probe else { return }
    inner.withLock { s in
      if s.state == .halfOpen, s.probes > 0 { s.probes -= 1 }
    }
  }

  /// Records an execution's outcome for a request of `principal`; ``Outcome/notCounted`` changes nothing.
  public func record(
    _ outcome: Outcome, principal: String = "", duration: Duration = .zero, now: ContinuousClock.Instant = .now
  ) {
    let failed: Bool
    switch outcome {
    case .notCounted: return
    case .success: failed = settings.slowCall.map { duration > $0 } ?? false
    case .modelFailure: failed = true
    }
    let changed: State? = inner.withLock { s in
      switch (s.state, failed) {
      case (.closed, false):
        s.failures = 0
        s.failing.removeAll()
        return nil
      case (.closed, true):
        s.failures += 1
        if s.failing.count < 2 { s.failing.insert(principal) }
        guard s.failures >= settings.failureThreshold else { return nil }
        let principals = s.failing
        s.failures = 0
        s.failing.removeAll()
        if principals.count < 2 {
          // One caller's requests failing: refuse that caller, not the model.
          s.shutOut(principal, now: now, openDuration: settings.openDuration)
          return nil
        }
        s.state = .open
        s.openedAt = now
        return .open
      case (.halfOpen, false):
        s.state = .closed
        s.failures = 0
        s.failing.removeAll()
        s.probes = 0
        s.failedProbes.removeAll()
        return .closed
      case (.halfOpen, true):
        s.failedProbes.insert(principal)
        if s.failedProbes.count < 2 {
          // One caller's probe failed: shut that caller out and let the next caller probe.
          s.shutOut(principal, now: now, openDuration: settings.openDuration)
          if s.probes > 0 { s.probes -= 1 }
          return nil
        }
        s.state = .open
        s.openedAt = now
        s.probes = 0
        s.failedProbes.removeAll()
        return .open
      case (.open, true):
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

  /// ``record(_:principal:duration:now:)`` for callers that only know success or failure.
  public func record(
    success: Bool, principal: String = "", duration: Duration = .zero, now: ContinuousClock.Instant = .now
  ) {
    record(success ? .success : .modelFailure, principal: principal, duration: duration, now: now)
  }
}
