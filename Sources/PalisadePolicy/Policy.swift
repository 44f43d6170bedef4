import Foundation
public import PalisadeIdentity
import PalisadeYAML

/// The authorisation policy: an ordered list of rules, first match decides, deny when nothing matches.
///
/// A rule names who (SPIFFE IDs exact or by path prefix, token subjects, token scopes), what (RPC names; `*`
/// covers every non-administrative RPC, administrative ones must be named) and which models (glob patterns and an
/// optional version constraint), whether it allows or denies, and an optional per-principal rate limit.
public struct Policy: Sendable {
  public var rules: [Rule]
  /// Principals refused everything, before any rule is consulted.
  public var quarantine: [SPIFFEID]
  /// SHA-256 of the file, for attestation and logs.
  public var digest: String
  /// What the screening stage does about out-of-distribution inputs and extraction alarms.
  public var containment: Containment = .defaults

  /// The policy's say over screening (`containment:` in the file).
  public struct Containment: Sendable, Equatable {
    /// Out-of-distribution inputs: as each model's manifest says, or always flag, or always reject.
    public enum Screening: String, Sendable { case manifest, flag, reject }
    /// Extraction alarms: alert only (metric and log), or also quarantine the principal.
    public enum Extraction: String, Sendable { case alert, quarantine }
    public var screening: Screening
    public var extraction: Extraction
    /// How long an automatic quarantine lasts.
    public var quarantineSeconds: Int
    public static let defaults = Containment(screening: .manifest, extraction: .alert, quarantineSeconds: 3600)
  }

  /// RPCs that change what the server serves: only rules naming them explicitly grant them.
  public static let adminRPCs: Set<String> = [
    "RepositoryModelLoad", "RepositoryModelUnload", "ListQuarantines", "LiftQuarantine", "RolloutStart",
    "RolloutStatus", "RolloutPromote", "RolloutAbort",
  ]
  /// Every RPC a rule may name.
  public static let knownRPCs: Set<String> = [
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer", "ModelStreamInfer",
    "ModelStatistics", "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload", "Check", "Watch",
    "ListQuarantines", "LiftQuarantine", "Attest", "RolloutStart", "RolloutStatus", "RolloutPromote", "RolloutAbort",
  ]

  public struct Rule: Sendable {
    public enum Effect: String, Sendable { case allow, deny }
    public enum Principal: Sendable, Equatable {
      case spiffe(SPIFFEID)
      case spiffePrefix(SPIFFEID)
      case subject(String)
      case scope(String)
    }
    public var name: String
    public var line: Int?
    public var effect: Effect
    /// Any of these matches; empty never matches.
    public var principals: [Principal]
    /// RPC names, or `*` for every non-admin RPC.
    public var rpcs: Set<String>
    /// Glob patterns on the model name; empty or absent: any model.
    public var models: [String]
    public var versions: VersionConstraint?
    public var rateLimit: RateLimit?

    func matches(principal call: CallFacts) -> Bool {
      principals.contains { p in
        switch p {
        case .spiffe(let id): call.spiffeID == id
        case .spiffePrefix(let prefix): call.spiffeID.isWithin(prefix)
        // Byte for byte: Swift's `==` would also equate canonically equivalent Unicode (a token's "\u{212A}ate"
        // with a rule's "Kate"), and the issuer decides who is who by the exact string.
        case .subject(let s): call.subject.map { $0.utf8.elementsEqual(s.utf8) } ?? false
        case .scope(let s): call.scopes.contains { $0.utf8.elementsEqual(s.utf8) }
        }
      }
    }

    func matches(rpc: String) -> Bool {
      rpcs.contains(rpc) || (rpcs.contains("*") && !Policy.adminRPCs.contains(rpc))
    }

    func matches(model: String?) -> Bool {
      guard let model, !models.isEmpty else { return true }
      return models.contains { Glob.matches(pattern: $0, model) }
    }
  }

  /// A token bucket: `perSecond` sustained, `burst` at once.
  public struct RateLimit: Sendable, Equatable {
    public var perSecond: Double
    public var burst: Double
  }

  /// What is known about a call when it is authorised.
  public struct CallFacts: Sendable {
    public var spiffeID: SPIFFEID
    public var subject: String?
    public var scopes: [String]
    public var rpc: String
    public var model: String?

    public init(spiffeID: SPIFFEID, subject: String?, scopes: [String], rpc: String, model: String?) {
      self.spiffeID = spiffeID
      self.subject = subject
      self.scopes = scopes
      self.rpc = rpc
      self.model = model
    }
  }

  /// The outcome, with the rule that decided it (for logs, audit and `policy explain`).
  public struct Decision: Sendable, Equatable {
    public var allowed: Bool
    public var rule: String?
    public var line: Int?
    public var reason: String
    public var versions: VersionConstraint?
    public var rateLimit: RateLimit?
  }

  /// Decides a call.
  public func decide(_ call: CallFacts) -> Decision {
    if quarantine.contains(where: { call.spiffeID == $0 || call.spiffeID.isWithin($0) }) {
      return Decision(allowed: false, rule: nil, line: nil, reason: "principal is quarantined")
    }
    for rule in rules
    where rule.matches(principal: call) && rule.matches(rpc: call.rpc) && rule.matches(model: call.model) {
      return Decision(
        allowed: rule.effect == .allow, rule: rule.name, line: rule.line,
        reason: "rule '\(rule.name)' \(rule.effect == .allow ? "allows" : "denies")", versions: rule.versions,
        rateLimit: rule.rateLimit)
    }
    return Decision(allowed: false, rule: nil, line: nil, reason: "no rule allows it (deny by default)")
  }
}

/// A version constraint such as `>=2`, `<5`, `=3` or `>=2,<5` on integer model versions.
public struct VersionConstraint: Sendable, Equatable, CustomStringConvertible {
  public enum Op: String, Sendable {
    case ge = ">="
    case gt = ">"
    case le = "<="
    case lt = "<"
    case eq = "="
  }
  public var clauses: [(op: Op, version: Int64)]
  public var description: String { clauses.map { "\($0.op.rawValue)\($0.version)" }.joined(separator: ",") }

  public init?(_ text: String) {
    var clauses: [(Op, Int64)] = []
    for part in text.split(separator: ",") {
      let p = part.trimmingCharacters(in: .whitespaces)
      guard
        let op = [Op.ge, .le, .gt, .lt, .eq].first(where: { p.hasPrefix($0.rawValue) }) ?? (Int64(p) != nil ? .eq : nil)
      else { return nil }
      let number = p.hasPrefix(op.rawValue) ? String(p.dropFirst(op.rawValue.count)) : p
      guard let v = Int64(number.trimmingCharacters(in: .whitespaces)), v >= 0 else { return nil }
      clauses.append((op, v))
    }
    guard !clauses.isEmpty else { return nil }
    self.clauses = clauses
  }

  /// Whether `version` satisfies every clause; non-integer versions never do.
  public func allows(_ version: String) -> Bool {
    guard let v = Int64(version) else { return false }
    return clauses.allSatisfy { c in
      switch c.op {
      case .ge: v >= c.version
      case .gt: v > c.version
      case .le: v <= c.version
      case .lt: v < c.version
      case .eq: v == c.version
      }
    }
  }

  public static func == (a: Self, b: Self) -> Bool { a.description == b.description }
}
