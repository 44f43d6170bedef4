import Foundation
import Synchronization

/// Per-principal token buckets, one per (rule, principal), refilled continuously.
public final class RateLimiter: Sendable {
  private struct Bucket {
    var tokens: Double
    var updated: ContinuousClock.Instant
  }
  private let buckets = Mutex<[String: Bucket]>([:])
  private let maxBuckets: Int

  public init(maxBuckets: Int = 100_000) {
    self.maxBuckets = maxBuckets
  }

  /// Takes one token for `key` under `limit`; when none is left returns the seconds until one will be.
  public func acquire(_ key: String, limit: Policy.RateLimit, now: ContinuousClock.Instant = .now) -> Double? {
    buckets.withLock { all in
      if all.count >= maxBuckets, all[key] == nil {
        // Full buckets carry no state worth keeping: forget them first.
        all = all.filter { $0.value.tokens < limit.burst }
        if all.count >= maxBuckets { all.removeAll() }
      }
      var bucket = all[key] ?? Bucket(tokens: limit.burst, updated: now)
      let elapsed =
        Double((now - bucket.updated).components.seconds)
        + Double((now - bucket.updated).components.attoseconds) / 1e18
      bucket.tokens = min(limit.burst, bucket.tokens + elapsed * limit.perSecond)
      bucket.updated = now
      defer { all[key] = bucket }
      if bucket.tokens >= 1 {
        bucket.tokens -= 1
        return nil
      }
      return (1 - bucket.tokens) / limit.perSecond
    }
  }
}
