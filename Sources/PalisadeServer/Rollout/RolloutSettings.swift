public import PalisadeYAML

/// How a rollout routes and when it promotes or rolls back. Every field has a default; `rollouts.defaults` in the
/// config changes them for every rollout, a planned rollout or `RolloutStart` for one.
public struct RolloutPlan: Sendable, Equatable {
  public enum Mode: String, Sendable, Equatable {
    /// The candidate answers a share of unpinned calls (sticky per principal).
    case canary
    /// The stable version answers every call; a share also runs on the candidate, off the caller's path.
    case shadow
  }
  public var mode: Mode = .canary
  /// Share of unpinned calls routed to (canary) or also run on (shadow) the candidate, in (0, 1].
  public var share = 0.05
  /// Candidate calls needed before any threshold is judged (and before a promotion).
  public var minCalls = 100
  /// Promotion after this many candidate calls within every threshold.
  public var promoteAfterCalls = 1000
  /// Or after this long (0: never by time), once `minCalls` were judged.
  public var promoteAfterSeconds = 600
  /// Rollback when the candidate's error rate exceeds the stable version's by more than this (absolute).
  public var maxErrorRateIncrease = 0.02
  /// Rollback when the candidate's p99 latency exceeds this multiple of the stable version's.
  public var maxP99Ratio = 2.0
  /// Rollback when the candidate's p99 latency exceeds this many milliseconds (0: no absolute bound).
  public var maxP99Ms = 0.0
  /// Rollback when the candidate's out-of-distribution flag rate exceeds the stable version's by more than this.
  public var maxOODRateIncrease = 0.10
  /// Rollback when the PSI of the candidate's predicted labels against the stable version's exceeds this
  /// (0.1: a moderate shift, 0.25: a significant one).
  public var maxLabelPSI = 0.25
  /// Shadow mode: rollback when fewer calls than this share give the same label on both versions.
  public var minShadowAgreement = 0.90
  /// Distinct callers the candidate must have served before a verdict that callers can steer (latency, OOD rate,
  /// label shift, shadow agreement) and before promotion; each caller counts toward `promoteAfterCalls` with at
  /// most `promoteAfterCalls / minPrincipals` calls. Canary routing is sticky per caller, so without this one
  /// caller on the candidate's side could roll it back with chosen inputs, or promote it alone with a burst.
  public var minPrincipals = 2

  public init() {}

  /// Reads the keys of a plan present in `m` over `self` (the caller finishes `m`).
  mutating func read(_ m: YAMLMap) throws(YAMLError) {
    if let v = try m.choice("mode", ["canary", "shadow"]) { mode = Mode(rawValue: v) ?? .canary }
    share = try m.double("share", in: 0.000_001...1) ?? share
    minCalls = try m.int("min_calls", in: 1...10_000_000) ?? minCalls
    promoteAfterCalls = try m.int("promote_after_calls", in: 1...1_000_000_000) ?? promoteAfterCalls
    promoteAfterSeconds = try m.int("promote_after_seconds", in: 0...31_536_000) ?? promoteAfterSeconds
    maxErrorRateIncrease = try m.double("max_error_rate_increase", in: 0...1) ?? maxErrorRateIncrease
    maxP99Ratio = try m.double("max_p99_ratio", in: 1...1000) ?? maxP99Ratio
    maxP99Ms = try m.double("max_p99_ms", in: 0...3_600_000) ?? maxP99Ms
    maxOODRateIncrease = try m.double("max_ood_rate_increase", in: 0...1) ?? maxOODRateIncrease
    maxLabelPSI = try m.double("max_label_psi", in: 0...100) ?? maxLabelPSI
    minShadowAgreement = try m.double("min_shadow_agreement", in: 0...1) ?? minShadowAgreement
    minPrincipals = try m.int("min_principals", in: 1...10_000) ?? minPrincipals
    if promoteAfterCalls < minCalls { throw m.error("promote_after_calls", "must be at least min_calls (\(minCalls))") }
  }
}

/// `rollouts:` in the config: defaults for every rollout, the shadow bound, and rollouts started at boot.
public struct RolloutSettings: Sendable, Equatable {
  /// A rollout the server starts once its models are loaded.
  public struct Planned: Sendable, Equatable {
    public var model: String
    /// The candidate version (the stable one is the newest version below it).
    public var candidate: String
    public var plan: RolloutPlan
    public init(model: String, candidate: String, plan: RolloutPlan) {
      self.model = model
      self.candidate = candidate
      self.plan = plan
    }
  }
  public var defaults = RolloutPlan()
  /// Shadow runs in flight at once, over all models; a shadow call finding the bound reached is skipped (and
  /// counted), so shadow work never queues behind or ahead of real calls.
  public var shadowMaxConcurrent = 1
  public var models: [Planned] = []

  public init() {}
  public static let defaults = RolloutSettings()

  /// Reads the `rollouts` mapping.
  public init(yaml m: YAMLMap) throws(YAMLError) {
    if let d = try m.map("defaults") {
      try defaults.read(d)
      try d.finish()
    }
    shadowMaxConcurrent = try m.int("shadow_max_concurrent", in: 1...1024) ?? shadowMaxConcurrent
    for p in try m.maps("models") ?? [] {
      guard let model = try p.string("model"), !model.isEmpty else { throw p.error("model", "is required") }
      guard let candidate = try p.string("candidate"), let v = Int(candidate), v > 0 else {
        throw p.error("candidate", "is required: the candidate version (a positive integer)")
      }
      if models.contains(where: { $0.model == model }) { throw p.error("model", "has more than one rollout") }
      var plan = defaults
      try plan.read(p)
      try p.finish()
      models.append(Planned(model: model, candidate: String(v), plan: plan))
    }
    try m.finish()
  }

  /// The `rollouts` section of `root`, or the defaults when absent.
  public static func parse(_ root: YAMLMap) throws(YAMLError) -> RolloutSettings {
    guard let m = try root.map("rollouts") else { return .defaults }
    return try RolloutSettings(yaml: m)
  }
}
