public import Foundation
public import PalisadeIdentity
import Synchronization

/// Principals quarantined at runtime (by the extraction monitor), each until a set time. The policy file's own
/// `quarantine` list is separate and lasts until the file changes; ``Authorizer`` consults both.
public final class QuarantineStore: Sendable {
  /// One automatic quarantine.
  public struct Entry: Sendable, Equatable {
    public var principal: SPIFFEID
    public var reason: String
    public var model: String?
    public var since: Date
    public var until: Date
  }

  private let entries = Mutex<[String: Entry]>([:])

  public init() {}

  /// Quarantines `principal` until `until` (extending an existing quarantine, never shortening it).
  public func add(_ principal: SPIFFEID, reason: String, model: String?, until: Date, now: Date = Date()) {
    entries.withLock { e in
      let key = principal.description
      if let existing = e[key], existing.until > until { return }
      e[key] = Entry(principal: principal, reason: reason, model: model, since: now, until: until)
    }
  }

  /// The entry in force for `principal`, if any; expired entries are dropped on the way.
  public func active(_ principal: SPIFFEID, now: Date = Date()) -> Entry? {
    entries.withLock { e in
      let key = principal.description
      guard let entry = e[key] else { return nil }
      if entry.until <= now {
        e[key] = nil
        return nil
      }
      return entry
    }
  }

  /// Every quarantine in force, oldest first.
  public func list(now: Date = Date()) -> [Entry] {
    entries.withLock { e in
      e = e.filter { $0.value.until > now }
      return e.values.sorted { $0.since < $1.since }
    }
  }

  /// Lifts the quarantine of `principal`; false when there was none.
  @discardableResult
  public func lift(_ principal: SPIFFEID) -> Bool {
    entries.withLock { $0.removeValue(forKey: principal.description) != nil }
  }

  /// Whether anything is quarantined (a cheap check for the hot path).
  public var isEmpty: Bool { entries.withLock { $0.isEmpty } }
}
