import PalisadeCore
@testable import PalisadeServer
import Testing

/// The rollout's verdicts against one caller steering them: canary routing is sticky per caller, so a caller on
/// the candidate's side must not decide a rollout alone, by its inputs (OOD flags, label shift), its load
/// (latency), or a burst of clean calls (promotion). The model's own failures still count from the first caller.
@Suite struct RolloutJudgeTests {
  static func rollout(_ edit: (inout RolloutPlan) -> Void = { _ in }) -> Rollout {
    var plan = RolloutPlan()
    plan.minCalls = 10
    plan.promoteAfterCalls = 40
    plan.promoteAfterSeconds = 0
    plan.minPrincipals = 2
    edit(&plan)
    var r = Rollout(id: "r", model: "m", stable: "1", candidate: "2", plan: plan)
    r.restart()
    return r
  }

  static func outcome(_ principal: String, failed: Bool = false, ood: Bool = false, label: Int = 0, ms: Int = 1)
    -> RolloutController.Outcome
  {
    .init(principal: principal, latency: .milliseconds(ms), failed: failed, outOfDistribution: ood, labels: [label])
  }

  @Test func oneCallerCannotPromoteWithABurst() {
    var r = Self.rollout()
    for _ in 0..<500 { #expect(r.observe(.candidate, Self.outcome("spiffe://t/a")) == nil) }
    // Its calls count up to promote_after_calls / min_principals = 20; a second caller's 20 complete the 40.
    #expect(r.candidate.countedCalls == 20)
    var verdict: RolloutController.Verdict?
    for _ in 0..<20 where verdict == nil { verdict = r.observe(.candidate, Self.outcome("spiffe://t/b")) }
    #expect(verdict?.state == .promoted, "\(String(describing: verdict))")
    #expect(verdict?.reason.contains("from 2 callers") == true)
  }

  @Test func oneCallerCannotRollBackWithChosenInputsOrLoad() {
    var r = Self.rollout { $0.maxP99Ms = 50 }
    for _ in 0..<20 { _ = r.observe(.stable, Self.outcome("spiffe://t/s", label: 0)) }
    // Out-of-distribution inputs, another label every call, and slow calls: all one caller's doing.
    for i in 0..<200 {
      #expect(r.observe(.candidate, Self.outcome("spiffe://t/a", ood: true, label: i % 7, ms: 200)) == nil)
    }
    // The same from a second caller is the candidate's behaviour: judged.
    var verdict: RolloutController.Verdict?
    for i in 0..<20 where verdict == nil {
      verdict = r.observe(.candidate, Self.outcome("spiffe://t/b", ood: true, label: i % 7, ms: 200))
    }
    #expect(verdict?.state == .rolledBack, "\(String(describing: verdict))")
  }

  @Test func theModelsOwnFailuresCountFromTheFirstCaller() {
    var r = Self.rollout()
    var verdict: RolloutController.Verdict?
    for _ in 0..<20 where verdict == nil { verdict = r.observe(.candidate, Self.outcome("spiffe://t/a", failed: true)) }
    #expect(verdict?.state == .rolledBack && verdict?.reason.contains("error rate") == true)
  }

  @Test func trackedCallersAreBoundedAndLaterOnesStillCountAsDistinct() {
    var r = Self.rollout { $0.minPrincipals = 1 }
    for i in 0..<(RolloutWindow.principalCapacity + 10) {
      r.candidate.add(Self.outcome("spiffe://t/\(i)"))
    }
    #expect(r.candidate.principalCalls.count == RolloutWindow.principalCapacity)
    #expect(r.candidate.distinctPrincipals == RolloutWindow.principalCapacity + 10)
  }

  @Test func minPrincipalsIsReadFromTheConfig() throws {
    let base =
      "server: {tls: {certificate_chain: a, private_key: b, client_ca_bundle: c}}\nauth: {audience: p, issuers: [{issuer: i, jwks: j}]}\npolicy: {file: p.yaml}"
    #expect(try ServerConfig.parse(base, baseDirectory: "/").rollouts.defaults.minPrincipals == 2)
    let c = try ServerConfig.parse(base + "\nrollouts: {defaults: {min_principals: 5}}", baseDirectory: "/")
    #expect(c.rollouts.defaults.minPrincipals == 5)
    #expect(throws: (any Error).self) {
      try ServerConfig.parse(base + "\nrollouts: {defaults: {min_principals: 0}}", baseDirectory: "/")
    }
  }
}
