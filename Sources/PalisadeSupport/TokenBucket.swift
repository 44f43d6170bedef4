/// A token bucket refilled continuously. The policy's rate limits (`RateLimiter`, per rule and principal) and the
/// transport's unauthorized-call budget (`CallBudget`, per principal) each keep a table of these under their own
/// lock; this is the arithmetic they share.
public struct TokenBucket: Sendable {
  /// Tokens left when last touched.
  public private(set) var tokens: Double
  /// When it was last touched.
  public private(set) var at: ContinuousClock.Instant

  /// A full bucket: a key never seen has its whole burst.
  public init(burst: Double, at now: ContinuousClock.Instant) {
    tokens = burst
    at = now
  }

  /// The bucket refilled at `perSecond`, up to `burst`, for the time since it was last touched. An earlier `now`
  /// (a caller that read the clock before another took the lock) leaves it as it is.
  public func refilled(perSecond: Double, burst: Double, now: ContinuousClock.Instant) -> TokenBucket {
    let elapsed = now - at
    guard elapsed > .zero else { return self }
    let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
    var bucket = self
    bucket.tokens = min(burst, tokens + seconds * perSecond)
    bucket.at = now
    return bucket
  }

  /// Refills, then takes one token: nil when taken, else the seconds until one will be (nothing is taken, so
  /// refusals do not run the bucket into debt).
  public mutating func take(perSecond: Double, burst: Double, now: ContinuousClock.Instant) -> Double? {
    self = refilled(perSecond: perSecond, burst: burst, now: now)
    guard tokens >= 1 else { return (1 - tokens) / perSecond }
    tokens -= 1
    return nil
  }

  /// Gives one token back, up to `burst`.
  public mutating func giveBack(burst: Double) {
    tokens = min(burst, tokens + 1)
  }
}
