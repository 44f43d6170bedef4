import Crypto
import Foundation
import PalisadeIdentity
public import PalisadeYAML

extension Policy {
  /// Reads and checks a policy file. Every problem is a `YAMLError` naming the line and key: unknown keys, unknown
  /// RPC names, invalid SPIFFE IDs, bad versions, duplicate rule names, rules that can never match.
  public static func load(path: String) throws(YAMLError) -> Policy {
    let data: Data
    do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
      throw YAMLError(file: path, path: "", line: nil, message: "cannot be read")
    }
    return try parse(String(decoding: data, as: UTF8.self), file: path)
  }

  public static func parse(_ text: String, file: String? = nil) throws(YAMLError) -> Policy {
    let root = try YAMLMap.parse(text, file: file)
    guard let version = try root.int("version", in: 1...1) else { throw root.error("version", "is required (1)") }
    _ = version
    var quarantine: [SPIFFEID] = []
    for id in try root.strings("quarantine") ?? [] {
      do { quarantine.append(try SPIFFEID(parsing: id)) } catch {
        throw root.error("quarantine", "'\(id)' is not a SPIFFE ID (\(error))")
      }
    }
    var rules: [Rule] = []
    for map in try root.maps("rules") ?? [] {
      guard let name = try map.string("name"), !name.isEmpty else { throw map.error("name", "is required") }
      if rules.contains(where: { $0.name == name }) { throw map.error("name", "'\(name)' is used by an earlier rule") }
      let effect = Rule.Effect(rawValue: try map.choice("effect", ["allow", "deny"]) ?? "allow") ?? .allow
      var principals: [Rule.Principal] = []
      guard let who = try map.maps("principals"), !who.isEmpty else {
        throw map.error("principals", "is required: at least one of spiffe, spiffe_prefix, subject, scope")
      }
      for p in who {
        let keys = p.keys
        guard keys.count == 1, let key = keys.first else {
          throw p.error(nil, "each principal has exactly one of spiffe, spiffe_prefix, subject, scope")
        }
        guard let value = try p.string(key), !value.isEmpty else { throw p.error(key, "must be a non-empty string") }
        switch key {
        case "spiffe", "spiffe_prefix":
          let id: SPIFFEID
          do { id = try SPIFFEID(parsing: value) } catch {
            throw p.error(key, "'\(value)' is not a SPIFFE ID (\(error))")
          }
          principals.append(key == "spiffe" ? .spiffe(id) : .spiffePrefix(id))
        case "subject": principals.append(.subject(value))
        case "scope": principals.append(.scope(value))
        default: throw p.error(key, "unknown principal kind (spiffe, spiffe_prefix, subject, scope)")
        }
        try p.finish()
      }
      guard let rpcList = try map.strings("rpcs"), !rpcList.isEmpty else {
        throw map.error("rpcs", "is required: RPC names or \"*\" (every non-admin RPC)")
      }
      for rpc in rpcList where rpc != "*" && !knownRPCs.contains(rpc) {
        throw map.error("rpcs", "unknown RPC '\(rpc)' (known: \(knownRPCs.sorted().joined(separator: ", ")))")
      }
      let modelList = try map.strings("models")
      // An empty list would read as "no restriction" (every model): say what is meant instead.
      if modelList == [] {
        throw map.error("models", "is an empty list; list model patterns, or remove the key for every model")
      }
      let models = modelList ?? []
      if models.contains(where: \.isEmpty) { throw map.error("models", "patterns must not be empty") }
      var versions: VersionConstraint?
      if let text = try map.string("versions") {
        guard let v = VersionConstraint(text) else {
          throw map.error("versions", "'\(text)' is not a version constraint (e.g. \">=2\", \"<5\", \">=2,<5\", \"3\")")
        }
        versions = v
      }
      var rateLimit: RateLimit?
      if let r = try map.map("rate_limit") {
        guard let perSecond = try r.double("per_second", in: 0.001...1_000_000) else {
          throw r.error("per_second", "is required")
        }
        let burst = try r.double("burst", in: 1...1_000_000) ?? max(1, perSecond)
        rateLimit = RateLimit(perSecond: perSecond, burst: burst)
        try r.finish()
      }
      if effect == .deny && rateLimit != nil { throw map.error("rate_limit", "has no meaning on a deny rule") }
      try map.finish()
      rules.append(
        Rule(
          name: name, line: map.line, effect: effect, principals: principals, rpcs: Set(rpcList), models: models,
          versions: versions, rateLimit: rateLimit))
    }
    var containment = Containment.defaults
    if let c = try root.map("containment") {
      if let v = try c.choice("screening", ["manifest", "flag", "reject"]) {
        containment.screening = Containment.Screening(rawValue: v) ?? .manifest
      }
      if let v = try c.choice("extraction", ["alert", "quarantine"]) {
        containment.extraction = Containment.Extraction(rawValue: v) ?? .alert
      }
      if let v = try c.int("quarantine_seconds", in: 1...30 * 86400) { containment.quarantineSeconds = v }
      try c.finish()
    }
    try root.finish()
    let digest = SHA256.hash(data: Array(text.utf8)).map { String(format: "%02x", $0) }.joined()
    var policy = Policy(rules: rules, quarantine: quarantine, digest: digest)
    policy.containment = containment
    return policy
  }
}
