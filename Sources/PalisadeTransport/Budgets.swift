import PalisadeSupport
import Synchronization

/// Open connections, in total and per source address (pre-authentication: an address is all we know).
public final class ConnectionLimiter: Sendable {
  private struct State {
    var total = 0
    var perAddress: [String: Int] = [:]
  }
  private let state = Mutex(State())
  let maxTotal: Int
  let maxPerAddress: Int

  public init(maxTotal: Int, maxPerAddress: Int) {
    self.maxTotal = maxTotal
    self.maxPerAddress = maxPerAddress
  }

  public enum Refusal: String, Sendable {
    case total = "max_connections"
    case perAddress = "max_connections_per_address"
  }

  /// Admits a connection from `host`, or says which cap it hits.
  public func admit(_ host: String) -> Refusal? {
    state.withLock { s in
      guard s.total < maxTotal else { return .total }
      let n = s.perAddress[host, default: 0]
      guard n < maxPerAddress else { return .perAddress }
      s.total += 1
      s.perAddress[host] = n + 1
      return nil
    }
  }

  /// Returns the count of open connections after the release.
  @discardableResult
  public func release(_ host: String) -> Int {
    state.withLock { s in
      s.total -= 1
      let n = s.perAddress[host, default: 1] - 1
      s.perAddress[host] = n > 0 ? n : nil
      return s.total
    }
  }

  public var open: Int { state.withLock { $0.total } }
}

/// A byte budget shared by many holders: bytes of request messages received but not yet complete.
///
/// One instance per connection, and one shared by all connections (keyed by principal). A stream charges the bytes
/// of its incomplete message as they arrive and releases them when the message is complete (handed on) or the
/// stream ends, so the memory that half-sent messages can pin is bounded.
final class InflightBudget: Sendable {
  let limit: Int
  private let used = Mutex<[String: Int]>([:])

  init(limit: Int) { self.limit = limit }

  /// Charges `bytes` to `key`; false (and nothing charged) when that would exceed the limit.
  func charge(_ bytes: Int, to key: String) -> Bool {
    used.withLock { u in
      let now = u[key, default: 0]
      guard bytes <= limit - now else { return false }
      u[key] = now + bytes
      return true
    }
  }

  func release(_ bytes: Int, from key: String) {
    guard bytes > 0 else { return }
    used.withLock { u in
      let left = u[key, default: 0] - bytes
      u[key] = left > 0 ? left : nil
    }
  }

  func inUse(_ key: String) -> Int { used.withLock { $0[key, default: 0] } }
}

/// Calls that do no authorized work, per principal across all of its connections: a token bucket each.
///
/// Token-exempt RPCs (`ServerLive`, health) are served without a token, and so without the policy's rate limits;
/// calls refused for their token or permission cost about as much as serving one. A peer with a certificate could
/// otherwise spend the server's CPU on them without limit (the `tcp_full` flood: ~5,600 `ServerLive` calls a
/// second). Charged by the stream handler; a principal with nothing left has its connection closed.
final class CallBudget: Sendable {
  let perSecond: Double
  let burst: Double
  private struct State {
    var buckets: [String: TokenBucket] = [:]
    /// Full buckets (no state a fresh one would not hold) are forgotten when the table grows past this; it
    /// doubles over what is left, so pruning stays amortized O(1) per call however many principals are active.
    var pruneAbove = 4096
  }
  private let state = Mutex(State())

  init(perSecond: Int, burst: Int) {
    self.perSecond = Double(max(1, perSecond))
    self.burst = Double(max(1, burst))
  }

  /// Takes one call from `key`'s bucket; false (nothing taken) when it is empty.
  func take(_ key: String, now: ContinuousClock.Instant = .now) -> Bool {
    state.withLock { s in
      var bucket = s.buckets[key] ?? TokenBucket(burst: burst, at: now)
      let refused = bucket.take(perSecond: perSecond, burst: burst, now: now) != nil
      s.buckets[key] = bucket
      if refused { return false }
      if s.buckets.count > s.pruneAbove {
        s.buckets = s.buckets.filter { $0.value.refilled(perSecond: perSecond, burst: burst, now: now).tokens < burst }
        s.pruneAbove = max(4096, 2 * s.buckets.count)
      }
      return true
    }
  }

  /// Gives back a call taken for a stream the client reset before it was answered (rapid reset has its own
  /// guard in NIOHTTP2; counting those here as well would cut such clients off under the wrong reason).
  func refund(_ key: String) {
    state.withLock { s in s.buckets[key]?.giveBack(burst: burst) }
  }

  /// Calls left in `key`'s bucket now (for tests).
  func left(_ key: String, now: ContinuousClock.Instant = .now) -> Double {
    state.withLock {
      ($0.buckets[key] ?? TokenBucket(burst: burst, at: now)).refilled(perSecond: perSecond, burst: burst, now: now)
        .tokens
    }
  }

  /// Principals tracked now (for tests).
  var tracked: Int { state.withLock { $0.buckets.count } }
}
