import PalisadeIdentity
import PalisadeYAML
import Testing

@testable import PalisadePolicy

@Suite struct PolicyTests {
  static let text = """
    version: 1
    quarantine: ["spiffe://td/ns/bad"]
    rules:
      - name: ops
        principals: [{spiffe: "spiffe://td/ns/ops/sa/op"}]
        rpcs: [RepositoryModelLoad, RepositoryModelUnload]
      - name: no-b
        effect: deny
        principals: [{spiffe: "spiffe://td/ns/app/sa/b"}]
        rpcs: [ModelInfer]
      - name: app
        principals: [{spiffe_prefix: "spiffe://td/ns/app"}, {scope: "infer:all"}]
        rpcs: ["*"]
        models: ["digits*", "team/**"]
        versions: ">=2,<10"
        rate_limit: {per_second: 2, burst: 3}
      - name: by-subject
        principals: [{subject: "svc-report"}]
        rpcs: [ModelStatistics]
    """

  func facts(_ id: String, _ rpc: String, _ model: String? = nil, subject: String? = nil, scopes: [String] = [])
    throws -> Policy.CallFacts
  {
    Policy.CallFacts(spiffeID: try SPIFFEID(parsing: id), subject: subject, scopes: scopes, rpc: rpc, model: model)
  }

  @Test(
    arguments: [
      ("spiffe://td/ns/app/sa/a", "ModelInfer", "digits", true, "app"),
      ("spiffe://td/ns/app/sa/a", "ModelInfer", "digits-v2", true, "app"),
      ("spiffe://td/ns/app/sa/a", "ModelInfer", "team/x/y", true, "app"),
      ("spiffe://td/ns/app/sa/a", "ModelInfer", "other", false, nil),
      ("spiffe://td/ns/app/sa/b", "ModelInfer", "digits", false, "no-b"),
      ("spiffe://td/ns/app/sa/b", "ModelMetadata", "digits", true, "app"),
      ("spiffe://td/ns/application/sa/a", "ModelInfer", "digits", false, nil),
      ("spiffe://td/ns/app/sa/a", "RepositoryModelLoad", "digits", false, nil),
      ("spiffe://td/ns/ops/sa/op", "RepositoryModelLoad", "digits", true, "ops"),
      ("spiffe://td/ns/ops/sa/op", "ModelInfer", "digits", false, nil),
      ("spiffe://td/ns/bad/sa/x", "ModelInfer", "digits", false, nil),
      ("spiffe://other/ns/app/sa/a", "ModelInfer", "digits", false, nil),
    ] as [(String, String, String, Bool, String?)])
  func decisionTable(id: String, rpc: String, model: String, allowed: Bool, rule: String?) throws {
    let policy = try Policy.parse(Self.text)
    let d = policy.decide(try facts(id, rpc, model))
    #expect(d.allowed == allowed)
    #expect(d.rule == rule)
  }

  @Test func containmentDefaultsAndIsRead() throws {
    #expect(try Policy.parse(Self.text).containment == .defaults)
    #expect(Policy.Containment.defaults.extraction == .alert && Policy.Containment.defaults.screening == .manifest)
    let p = try Policy.parse(
      "version: 1\ncontainment: {screening: reject, extraction: quarantine, quarantine_seconds: 120}\nrules: []")
    #expect(p.containment == .init(screening: .reject, extraction: .quarantine, quarantineSeconds: 120))
  }

  @Test func quarantineAdministrationIsNeverCoveredByAStar() throws {
    let p = try Policy.parse(Self.text)
    for rpc in ["ListQuarantines", "LiftQuarantine"] {
      #expect(!p.decide(try facts("spiffe://td/ns/app/sa/a", rpc)).allowed)
    }
    #expect(p.decide(try facts("spiffe://td/ns/app/sa/a", "Attest")).allowed)
  }

  @Test func scopesAndSubjectsMatch() throws {
    let policy = try Policy.parse(Self.text)
    #expect(policy.decide(try facts("spiffe://x/y", "ModelInfer", "digits", scopes: ["infer:all"])).allowed)
    #expect(policy.decide(try facts("spiffe://x/y", "ModelStatistics", nil, subject: "svc-report")).allowed)
    #expect(!policy.decide(try facts("spiffe://x/y", "ModelStatistics", nil, subject: "svc-other")).allowed)
    #expect(policy.decide(try facts("spiffe://td/ns/bad", "ModelInfer", "digits")).reason.contains("quarantined"))
    // Byte for byte, not by Swift's canonical equivalence: a token's lookalike subject or scope is another one.
    let lookalikes = try Policy.parse(
      "version: 1\nrules:\n  - name: kate\n    principals: [{subject: \"Kate\"}, {subject: \"Jos\u{00E9}\"}, "
        + "{scope: \"models:Kadmin\"}]\n    rpcs: [ModelStatistics]\n")
    #expect(lookalikes.decide(try facts("spiffe://x/y", "ModelStatistics", nil, subject: "Kate")).allowed)
    for subject in ["\u{212A}ate", "Jose\u{0301}"] {
      #expect(!lookalikes.decide(try facts("spiffe://x/y", "ModelStatistics", nil, subject: subject)).allowed)
    }
    #expect(
      !lookalikes.decide(try facts("spiffe://x/y", "ModelStatistics", nil, scopes: ["models:\u{212A}admin"])).allowed)
  }

  @Test func versionConstraints() throws {
    let v = try #require(VersionConstraint(">=2,<10"))
    #expect(v.allows("2") && v.allows("9") && !v.allows("1") && !v.allows("10") && !v.allows("latest"))
    #expect(VersionConstraint("3")?.allows("3") == true)
    #expect(VersionConstraint("~3") == nil)
    #expect(VersionConstraint("") == nil)
  }

  @Test func globs() {
    #expect(Glob.matches(pattern: "digits*", "digits-v2"))
    #expect(!Glob.matches(pattern: "digits*", "digits/v2"))
    #expect(Glob.matches(pattern: "team/**", "team/a/b"))
    #expect(Glob.matches(pattern: "a?c", "abc"))
    #expect(!Glob.matches(pattern: "a?c", "a/c"))
  }

  @Test func rateLimitIsPerPrincipalTokenBucket() {
    let limiter = RateLimiter()
    let limit = Policy.RateLimit(perSecond: 2, burst: 3)
    let t0 = ContinuousClock.now
    for _ in 0..<3 { #expect(limiter.acquire("a", limit: limit, now: t0) == nil) }
    let wait = limiter.acquire("a", limit: limit, now: t0)
    #expect(wait != nil && wait! > 0.4 && wait! <= 0.5)
    #expect(limiter.acquire("b", limit: limit, now: t0) == nil)  // another principal has its own bucket
    #expect(limiter.acquire("a", limit: limit, now: t0 + .milliseconds(600)) == nil)
  }

  @Test(
    arguments: [
      ("version: 2\nrules: []", "version", 1),
      ("rules: []", "version", 1),
      // YAML 1.1's base 60: once a trap inside Yams (a policy reload stopped the server), now a refusal.
      ("version: 1:0:0:0:0:0:0:0:0:0:0:0\nrules: []", "version", 1),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'https://x'}]\n    rpcs: ['*']",
        "rules[0].principals[0].spiffe", 4
      ),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: [ModelInfr]",
        "rules[0].rpcs", 5
      ),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']\n    versions: 'latest'",
        "rules[0].versions", 6
      ),
      ("version: 1\nrules:\n  - name: a\n    principals: []\n    rpcs: ['*']", "rules[0].principals", 4),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x', scope: s}]\n    rpcs: ['*']",
        "rules[0].principals[0]", 4
      ),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']",
        "rules[1].name", 6
      ),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']\n    effect: deny\n    rate_limit: {per_second: 1}",
        "rules[0].rate_limit", 7
      ),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']\n    models: [digits]\n    colour: red",
        "rules[0].colour", 7
      ),
      // A rule whose setting lost its value fails closed, not open (deny becoming allow, every model, no
      // version constraint, no rate limit).
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']\n    effect: ~",
        "rules[0].effect", 6
      ),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']\n    models:",
        "rules[0].models", 6
      ),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']\n    models: []",
        "rules[0].models", 6
      ),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']\n    versions: null",
        "rules[0].versions", 6
      ),
      (
        "version: 1\nrules:\n  - name: a\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: ['*']\n    rate_limit: ~",
        "rules[0].rate_limit.per_second", 6
      ),
      ("version: 1\nquarantine: ['nope']", "quarantine", 2),
      ("version: 1\ncontainment: {extraction: ban}", "containment.extraction", 2),
      ("version: 1\ncontainment: {screening: drop}", "containment.screening", 2),
      ("version: 1\ncontainment: {quarantine_seconds: 0}", "containment.quarantine_seconds", 2),
      ("version: 1\ncontainment: {alert: yes}", "containment.alert", 2),
    ] as [(String, String, Int)])
  func errorsNameKeyAndLine(text: String, path: String, line: Int) {
    do {
      _ = try Policy.parse(text, file: "p.yaml")
      Issue.record("accepted: \(text)")
    } catch {
      #expect(error.path == path, "\(error)")
      #expect(error.line == line, "\(error)")
      #expect(error.description.hasPrefix("p.yaml:"))
    }
  }
}
