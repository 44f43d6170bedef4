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
