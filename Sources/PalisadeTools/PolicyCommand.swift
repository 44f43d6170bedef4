import ArgumentParser
import Foundation
import PalisadeIdentity
import PalisadePolicy
import PalisadeYAML

/// `palisade policy`: check, test and explain a policy file.
struct PolicyCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "policy",
    abstract: "Check, test and explain an authorisation policy file.",
    discussion: "Exit status: 0 when the policy is valid (and, for `test`, every case matches), 1 otherwise.",
    subcommands: [Check.self, Test.self, Explain.self]
  )

  static func load(_ path: String) throws -> Policy {
    do { return try Policy.load(path: path) } catch {
      FileHandle.standardError.write(Data("palisade policy: \(error)\n".utf8))
      throw ExitCode(1)
    }
  }

  struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract:
        "Validate a policy file: schema and meaning (unknown RPCs, bad SPIFFE IDs, versions), with line numbers.")
    @Argument(help: "The policy file.") var file: String
    func run() throws {
      let policy = try PolicyCommand.load(file)
      print(
        "policy OK: \(file): \(policy.rules.count) rules, \(policy.quarantine.count) quarantined, sha256 \(policy.digest)"
      )
    }
  }

  struct Test: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Run a table of cases against a policy; exit 1 on any mismatch.",
      discussion: """
        CASES is YAML:
          cases:
            - {principal: "spiffe://td/ns/a", rpc: ModelInfer, model: digits, expect: allow}
            - {principal: "spiffe://td/ns/b", scopes: [x], subject: svc-b, rpc: RepositoryModelLoad, model: digits, expect: deny}
        `rule` may name the rule expected to decide.
        """
    )
    @Argument(help: "The policy file.") var file: String
    @Argument(help: "The cases file.") var cases: String

    func run() throws {
      let policy = try PolicyCommand.load(file)
      let table: [(Policy.CallFacts, Bool, String?, Int?)]
      do { table = try Self.readCases(cases) } catch {
        FileHandle.standardError.write(Data("palisade policy test: \(error)\n".utf8))
        throw ExitCode(1)
      }
      var failures = 0
      for (facts, expectAllow, expectRule, line) in table {
        let d = policy.decide(facts)
        let ok = d.allowed == expectAllow && (expectRule == nil || expectRule == d.rule)
        if !ok { failures += 1 }
        let what = "\(facts.spiffeID) \(facts.rpc)\(facts.model.map { " \($0)" } ?? "")"
        print(
          "\(ok ? "PASS" : "FAIL")  line \(line ?? 0)  \(what) -> \(d.allowed ? "allow" : "deny") (\(d.rule ?? "default deny"))\(ok ? "" : "; expected \(expectAllow ? "allow" : "deny")\(expectRule.map { " by \($0)" } ?? "")")"
        )
      }
      print("\(table.count - failures) passed, \(failures) failed")
      if failures > 0 { throw ExitCode(1) }
    }

    static func readCases(_ path: String) throws -> [(Policy.CallFacts, Bool, String?, Int?)] {
      let text: String
      do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
        throw YAMLError(file: path, path: "", line: nil, message: "cannot be read")
      }
      let root = try YAMLMap.parse(text, file: path)
      var out: [(Policy.CallFacts, Bool, String?, Int?)] = []
      for c in try root.maps("cases") ?? [] {
        guard let principal = try c.string("principal") else { throw c.error("principal", "is required") }
        let id: SPIFFEID
        do { id = try SPIFFEID(parsing: principal) } catch { throw c.error("principal", "is not a SPIFFE ID") }
        guard let rpc = try c.string("rpc") else { throw c.error("rpc", "is required") }
        guard let expect = try c.choice("expect", ["allow", "deny"]) else { throw c.error("expect", "is required") }
        let facts = Policy.CallFacts(
          spiffeID: id, subject: try c.string("subject"), scopes: try c.strings("scopes") ?? [], rpc: rpc,
          model: try c.string("model"))
        let rule = try c.string("rule")
        try c.finish()
        out.append((facts, expect == "allow", rule, c.line))
      }
      try root.finish()
      return out
    }
  }

  struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Say which rule decides one call, and how.")
    @Argument(help: "The policy file.") var file: String
    @Option(help: "The caller's SPIFFE ID.") var principal: String
    @Option(help: "The RPC, e.g. ModelInfer.") var rpc: String
    @Option(help: "The model name.") var model: String?
    @Option(help: "The token's sub.") var subject: String?
    @Option(help: "A token scope (repeatable).") var scope: [String] = []

    func run() throws {
      let policy = try PolicyCommand.load(file)
      let id: SPIFFEID
      do { id = try SPIFFEID(parsing: principal) } catch {
        throw ValidationError("--principal is not a SPIFFE ID: \(error)")
      }
      let d = policy.decide(.init(spiffeID: id, subject: subject, scopes: scope, rpc: rpc, model: model))
      print("\(d.allowed ? "ALLOW" : "DENY"): \(d.reason)")
      if let rule = d.rule { print("rule: \(rule) (line \(d.line ?? 0))") }
      if let v = d.versions { print("versions: \(v)") }
      if let r = d.rateLimit { print("rate limit: \(r.perSecond)/s, burst \(r.burst)") }
    }
  }
}
