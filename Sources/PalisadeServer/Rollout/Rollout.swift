import Foundation

/// One version's window in a rollout: everything observed since the rollout started (both versions start
/// together, so they cover the same time).
struct RolloutWindow {
  static let latencyCapacity = 2048
  /// Distinct labels counted; the rest share one overflow bin (labels are the model's classes, a small set).
  static let labelCapacity = 1024
  static let overflowLabel = Int.min

  var version: String
  var calls = 0
  var errors = 0
  var outOfDistribution = 0
  /// The most recent latencies in milliseconds (a ring), for p99.
  var latencies: [Double] = []
  var next = 0
  var labels: [Int: Int] = [:]
  var labelTotal = 0
  /// Calls per caller (at most `principalCapacity` callers tracked; later ones count as distinct, untracked).
  static let principalCapacity = 4096
  var principalCalls: [String: Int] = [:]
  var untrackedPrincipalCalls = 0
  /// Calls that count toward promotion: each caller's first `perPrincipalCap`.
  var countedCalls = 0
  let perPrincipalCap: Int

  init(version: String, perPrincipalCap: Int = .max) {
    self.version = version
    self.perPrincipalCap = max(1, perPrincipalCap)
  }

  /// Distinct callers seen (untracked ones beyond the capacity each count once: they are new by construction).
  var distinctPrincipals: Int { principalCalls.count + untrackedPrincipalCalls }

  mutating func add(_ o: RolloutController.Outcome) {
    calls += 1
    if let seen = principalCalls[o.principal] {
      principalCalls[o.principal] = seen + 1
      if seen < perPrincipalCap { countedCalls += 1 }
    } else if principalCalls.count < Self.principalCapacity {
      principalCalls[o.principal] = 1
      countedCalls += 1
    } else {
      untrackedPrincipalCalls += 1
      countedCalls += 1
    }
    if o.failed { errors += 1 }
    if o.outOfDistribution { outOfDistribution += 1 }
    let ms = Double(o.latency.components.seconds) * 1000 + Double(o.latency.components.attoseconds) / 1e15
    if latencies.count < Self.latencyCapacity {
      latencies.append(ms)
    } else {
      latencies[next] = ms
      next = (next + 1) % Self.latencyCapacity
    }
    for label in o.labels ?? [] {
      let key = labels[label] != nil || labels.count < Self.labelCapacity ? label : Self.overflowLabel
      labels[key, default: 0] += 1
      labelTotal += 1
    }
  }

  var errorRate: Double { calls == 0 ? 0 : Double(errors) / Double(calls) }
  var oodRate: Double { calls == 0 ? 0 : Double(outOfDistribution) / Double(calls) }

  /// The 99th percentile of the recent latencies (nearest rank), 0 without any.
  var p99: Double {
    guard !latencies.isEmpty else { return 0 }
    let sorted = latencies.sorted()
    let rank = Int((0.99 * Double(sorted.count)).rounded(.up)) - 1
    return sorted[max(0, min(sorted.count - 1, rank))]
  }

  var status: RolloutController.WindowStatus {
    .init(version: version, calls: calls, errors: errors, errorRate: errorRate, p99Milliseconds: p99, oodRate: oodRate)
  }

  /// Population stability index of `self`'s labels against `reference`'s: Σ (p − q) · ln(p / q) over the labels
  /// either saw, each share floored at 1e-4 so that a label only one side saw counts without dividing by zero.
  func psi(against reference: RolloutWindow) -> Double? {
    guard labelTotal > 0, reference.labelTotal > 0 else { return nil }
    var sum = 0.0
    for key in Set(labels.keys).union(reference.labels.keys) {
      let p = max(Double(labels[key] ?? 0) / Double(labelTotal), 1e-4)
      let q = max(Double(reference.labels[key] ?? 0) / Double(reference.labelTotal), 1e-4)
      sum += (p - q) * log(p / q)
    }
    return sum
  }
}

/// One model's rollout, kept under the controller's lock.
struct Rollout {
  /// What routing needs, copied out of the lock on every unpinned call.
  struct Routing {
    var id: String
    var key: UInt64
    var state: RolloutController.State
    var mode: RolloutPlan.Mode
    var share: Double
    var stable: String
    var candidate: String
  }

  /// Below this p99 (ms) the latency ratio is not judged: on a loaded box a sub-millisecond model's p99 doubles
  /// from scheduling noise alone.
  static let p99RatioFloorMs = 10.0
  /// Candidate calls between full judgements (p99 sorts the ring, PSI walks the labels).
  static let fullJudgementEvery = 16

  let id: String
  let key: UInt64
  let model: String
  let stableVersion: String
  let candidateVersion: String
  let plan: RolloutPlan
  var state: RolloutController.State = .active
  var reason = ""
  var started = ContinuousClock.now
  var startedWall = Date()
  var endedWall: Date?
  var stable: RolloutWindow
  var candidate: RolloutWindow
  var shadowCompared = 0
  var shadowAgreed = 0
  var shadowSkipped = 0
  /// The placeholder of a start whose candidate is still loading (it routes every call to the stable version).
  var loading = false
  static let loadingReason = "loading the candidate"

  init(id: String, model: String, stable: String, candidate: String, plan: RolloutPlan) {
    self.id = id
    self.key = UInt64.random(in: .min ... .max)
    self.model = model
    self.stableVersion = stable
    self.candidateVersion = candidate
    self.plan = plan
    self.stable = RolloutWindow(version: stable)
    self.candidate = RolloutWindow(version: candidate, perPrincipalCap: Self.perPrincipalCap(plan))
  }

  /// How many of one caller's calls count toward `promoteAfterCalls`.
  static func perPrincipalCap(_ plan: RolloutPlan) -> Int {
    (plan.promoteAfterCalls + plan.minPrincipals - 1) / max(1, plan.minPrincipals)
  }

  /// Whether unpinned calls of the model are routed by this rollout (false once a version of it left the
  /// repository: it is then only listed).
  var routes = true

  var routing: Routing? {
    guard routes else { return nil }
    return Routing(
      id: id, key: key, state: state, mode: plan.mode, share: plan.share, stable: stableVersion,
      candidate: candidateVersion)
  }

  /// Starts both windows now (when the candidate becomes active).
  mutating func restart() {
    started = .now
    startedWall = Date()
    stable = RolloutWindow(version: stableVersion)
    candidate = RolloutWindow(version: candidateVersion, perPrincipalCap: Self.perPrincipalCap(plan))
  }

  /// Adds an outcome, then judges the candidate: a verdict when the rollout ends here.
  mutating func observe(_ role: RolloutController.Route.Role, _ outcome: RolloutController.Outcome) -> RolloutController
    .Verdict?
  {
    guard state == .active else { return nil }
    switch role {
    case .stable:
      stable.add(outcome)
      return nil
    case .candidate:
      candidate.add(outcome)
      return judge()
    }
  }

  /// The first threshold the candidate breaches (rollback), or a promotion when it is due and none is breached.
  mutating func judge() -> RolloutController.Verdict? {
    guard state == .active, candidate.calls >= plan.minCalls else { return nil }
    let elapsed = ContinuousClock.now - started
    let enoughCallers = candidate.distinctPrincipals >= plan.minPrincipals
    let due =
      enoughCallers
      && (candidate.countedCalls >= plan.promoteAfterCalls
        || (plan.promoteAfterSeconds > 0 && elapsed >= .seconds(plan.promoteAfterSeconds)))
    let full = due || candidate.calls == plan.minCalls || candidate.calls % Self.fullJudgementEvery == 0
    if let breach = breach(full: full, steerable: enoughCallers) { return end(.rolledBack, reason: breach) }
    if due {
      return end(
        .promoted,
        reason: candidate.countedCalls >= plan.promoteAfterCalls
          ? "\(candidate.calls) candidate calls from \(candidate.distinctPrincipals) callers within every threshold"
          : "\(plan.promoteAfterSeconds) s within every threshold (\(candidate.calls) candidate calls from \(candidate.distinctPrincipals) callers)"
      )
    }
    return nil
  }

  /// The breached threshold, in words. Rates against the stable version are judged once it has `minCalls` too.
  /// The model's own failures are judged from the first caller; what callers can steer with their inputs or their
  /// load (OOD flags, latency, label shift, shadow agreement) only once `steerable`: enough distinct callers.
  func breach(full: Bool, steerable: Bool) -> String? {
    let judged = stable.calls >= plan.minCalls
    let stableErrors = judged ? stable.errorRate : 0
    if candidate.errorRate > stableErrors + plan.maxErrorRateIncrease {
      return
        "error rate \(Self.percent(candidate.errorRate)) over \(candidate.calls) calls exceeds the stable version's \(Self.percent(stableErrors)) by more than \(Self.percent(plan.maxErrorRateIncrease))"
    }
    guard steerable else { return nil }
    let stableOOD = judged ? stable.oodRate : 0
    if candidate.oodRate > stableOOD + plan.maxOODRateIncrease {
      return
        "out-of-distribution flag rate \(Self.percent(candidate.oodRate)) exceeds the stable version's \(Self.percent(stableOOD)) by more than \(Self.percent(plan.maxOODRateIncrease))"
    }
    guard full else { return nil }
    let p99 = candidate.p99
    if plan.maxP99Ms > 0, p99 > plan.maxP99Ms {
      return "p99 latency \(Self.ms(p99)) exceeds the \(Self.ms(plan.maxP99Ms)) bound"
    }
    if judged {
      let reference = max(stable.p99, Self.p99RatioFloorMs)
      if p99 > plan.maxP99Ratio * reference {
        return
          "p99 latency \(Self.ms(p99)) exceeds \(plan.maxP99Ratio)× the stable version's \(Self.ms(stable.p99)) (floor \(Self.ms(Self.p99RatioFloorMs)))"
      }
      if plan.mode == .canary, let psi = candidate.psi(against: stable), psi > plan.maxLabelPSI {
        return "output shift: PSI of predicted labels \(String(format: "%.3f", psi)) exceeds \(plan.maxLabelPSI)"
      }
    }
    if plan.mode == .shadow, shadowCompared >= plan.minCalls {
      let agreement = Double(shadowAgreed) / Double(shadowCompared)
      if agreement < plan.minShadowAgreement {
        return
          "shadow agreement \(Self.percent(agreement)) over \(shadowCompared) calls is below \(Self.percent(plan.minShadowAgreement))"
      }
      if let psi = candidate.psi(against: stable), psi > plan.maxLabelPSI {
        return "output shift: PSI of predicted labels \(String(format: "%.3f", psi)) exceeds \(plan.maxLabelPSI)"
      }
    }
    return nil
  }

  /// Ends the rollout (the state changes under the lock, so the very next unpinned call routes accordingly).
  mutating func end(_ state: RolloutController.State, reason: String) -> RolloutController.Verdict {
    self.state = state
    self.reason = reason
    endedWall = Date()
    return .init(
      model: model, id: id, state: state, stable: stableVersion, candidate: candidateVersion, reason: reason,
      breach: state == .rolledBack)
  }

  var status: RolloutController.Status {
    .init(
      id: id, model: model, plan: plan, state: state, stable: stable.status, candidate: candidate.status,
      labelPSI: candidate.psi(against: stable) ?? 0, shadowCompared: shadowCompared,
      shadowAgreement: shadowCompared == 0 ? 0 : Double(shadowAgreed) / Double(shadowCompared),
      shadowSkipped: shadowSkipped, started: startedWall, ended: endedWall, reason: reason)
  }

  static func percent(_ v: Double) -> String { String(format: "%.1f%%", v * 100) }
  static func ms(_ v: Double) -> String { String(format: "%.1f ms", v) }
}
