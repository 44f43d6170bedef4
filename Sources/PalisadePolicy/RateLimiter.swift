import Foundation
import PalisadeSupport
import Synchronization

/// Per-principal token buckets, one per (rule, principal), refilled continuously.
public final class RateLimiter: Sendable {
  private let buckets = Mutex<[String: TokenBucket]>([:])
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
      var bucket = all[key] ?? TokenBucket(burst: limit.burst, at: now)
      defer { all[key] = bucket }
      return bucket.take(perSecond: limit.perSecond, burst: limit.burst, now: now)
    }
  }
}
