public import Foundation
public import Logging
public import PalisadeCore
import Synchronization

/// Canary and shadow rollouts of model versions (one per model), with automatic promotion and rollback.
///
/// Routing happens where an unpinned call picks its version (``ModelResolver``): a call that names a version is
/// never routed. While a rollout is active, a canary sends the share of principals whose keyed hash falls below
/// `share` to the candidate (sticky: a caller does not flip between versions), and a shadow keeps every call on the
/// stable version and also runs a share of them on the candidate, off the caller's path and bounded. Both versions'
/// windows (calls, errors, p99 latency, out-of-distribution flags, predicted labels) start together; every candidate
/// call re-judges the thresholds, and the first breach rolls back at once: the candidate takes no new call, stays
/// loaded for inspection, and the reason is in the status. After a rollback or an abort unpinned calls keep going
/// to the stable version (even though the candidate is the newer one) until either version leaves the repository.
public final class RolloutController: Sendable {
  public enum State: String, Sendable, Equatable {
    case active
    case promoted
    case rolledBack = "rolled_back"
    case aborted
  }

  /// Where one unpinned call goes; non-nil only for models with a rollout.
  public struct Route: Sendable {
    public enum Role: String, Sendable { case stable, candidate }
    public let rolloutID: String
    public let model: String
    public let version: String
    public let role: Role
    /// Whether the call is counted in the rollout's windows (only while it is active).
    public let observed: Bool
    /// Shadow mode: the candidate version this call also runs on.
    public let shadow: String?
  }

  /// A snapshot of one version's window.
  public struct WindowStatus: Sendable, Equatable {
    public var version: String
    public var calls: Int
    public var errors: Int
    public var errorRate: Double
    public var p99Milliseconds: Double
    public var oodRate: Double
  }

  /// A snapshot of one rollout, for `RolloutStatus` and the CLI.
  public struct Status: Sendable, Equatable {
    public var id: String
    public var model: String
    public var plan: RolloutPlan
    public var state: State
    public var stable: WindowStatus
    public var candidate: WindowStatus
    public var labelPSI: Double
    public var shadowCompared: Int
    public var shadowAgreement: Double
    public var shadowSkipped: Int
    public var started: Date
    public var ended: Date?
    public var reason: String
  }

  /// What one observed call did.
  struct Outcome {
    /// The caller (its SPIFFE ID): a rollout's verdicts need several of them.
    var principal: String
    /// The model's own time (queue wait excluded: that is other callers' load).
    var latency: Duration
    /// The model failed (a ``CircuitBreaker/Outcome/modelFailure``, an open circuit, non-finite outputs); a
    /// caller's own refusals and cancellations are not recorded at all.
    var failed: Bool
    var outOfDistribution: Bool
    var labels: [Int]?
  }

  let repository: ModelRepository
  let bundles: BundleLoader?
  let settings: RolloutSettings
  let metrics: ServerMetrics
  let auditor: Auditor
  let logger: Logger
  private let rollouts = Mutex<[String: Rollout]>([:])
  /// Models with routing state: zero (no rollout anywhere) skips the lock on every call.
  private let routed = Atomic<Int>(0)
  private let shadowsInFlight = Atomic<Int>(0)

  public init(
    repository: ModelRepository, bundles: BundleLoader?, settings: RolloutSettings, metrics: ServerMetrics,
    auditor: Auditor, logger: Logger
  ) {
    self.repository = repository
    self.bundles = bundles
    self.settings = settings
    self.metrics = metrics
    self.auditor = auditor
    self.logger = logger
    // A version that leaves the repository (unloaded, or retired by a newer load) ends its model's routing: with
    // one side gone there is nothing left to route between.
    repository.onRetire { [weak self, weak repository] models in
      guard let self, let repository else { return }
      for d in models.map(\.descriptor) where !repository.isReady(name: d.name, version: d.version) {
        self.dropRouting(model: d.name, version: d.version)
      }
    }
  }

  // MARK: routing (per call)

  /// The route of an unpinned call of `model` by `principal`, or nil when the model has no rollout. `allows` is the
  /// policy's version constraint: a caller the policy keeps off the candidate stays on the stable version.
  public func route(model: String, principal: String, allows: (String) -> Bool = { _ in true }) -> Route? {
    guard routed.load(ordering: .acquiring) > 0 else { return nil }
    guard let r = rollouts.withLock({ $0[model]?.routing }) else { return nil }
    // Unpinned calls always pick a version here; `allows` only keeps a caller off the candidate.
    switch r.state {
    case .active:
      if r.mode == .canary {
        let candidate = Self.bucket(key: r.key, principal: principal) < r.share && allows(r.candidate)
        return Route(
          rolloutID: r.id, model: model, version: candidate ? r.candidate : r.stable,
          role: candidate ? .candidate : .stable,
          observed: true, shadow: nil)
      }
      // A caller the policy keeps off the candidate's version is not shadowed onto it either.
      let shadow = Double.random(in: 0..<1) < r.share && allows(r.candidate)
      return Route(
        rolloutID: r.id, model: model, version: r.stable, role: .stable, observed: true,
        shadow: shadow ? r.candidate : nil)
    case .promoted:
      return Route(rolloutID: r.id, model: model, version: r.candidate, role: .candidate, observed: false, shadow: nil)
    case .rolledBack, .aborted:
      return Route(rolloutID: r.id, model: model, version: r.stable, role: .stable, observed: false, shadow: nil)
    }
  }

  /// The version an unpinned lookup (metadata, readiness) resolves to while `model` has routing state.
  public func defaultVersion(model: String) -> String? {
    guard routed.load(ordering: .acquiring) > 0 else { return nil }
    return rollouts.withLock { all in
      guard let r = all[model], r.routes else { return nil }
      return r.state == .promoted ? r.candidateVersion : r.stableVersion
    }
  }

  /// A principal's place in [0, 1) for a rollout: FNV-1a over the principal, keyed by the rollout's random key,
  /// then the splitmix64 finaliser so that nearby inputs spread over the whole range.
  static func bucket(key: UInt64, principal: String) -> Double {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ key
    for byte in principal.utf8 {
      h ^= UInt64(byte)
      h = h &* 0x0000_0100_0000_01B3
    }
    h ^= h >> 30
    h = h &* 0xbf58_476d_1ce4_e5b9
    h ^= h >> 27
    h = h &* 0x94d0_49bb_1331_11eb
    h ^= h >> 31
    return Double(h >> 11) * 0x1.0p-53
  }

  /// Whether `principal` is in the candidate's share of `model`'s active canary (for tests and `rollout status`).
  public func routesToCandidate(model: String, principal: String) -> Bool {
    route(model: model, principal: principal)?.role == .candidate
  }

  /// Records an observed call's outcome and acts on the verdict (rollback at the first breach, or promotion).
  func record(_ route: Route, outcome: Outcome) {
    guard route.observed else { return }
    metrics.recordRolloutCall(model: route.model, role: route.role.rawValue)
    // Mutated in place in the dictionary: copying the rollout out and back would copy its windows every call.
    let verdict = rollouts.withLock { all -> Verdict? in
      guard all[route.model]?.id == route.rolloutID else { return nil }
      return all[route.model]?.observe(route.role, outcome)
    }
    if let verdict { act(verdict) }
  }

  // MARK: shadow

  /// Runs `inputs` on the shadow candidate in its own task when the shadow bound allows, compares its labels with
  /// the stable version's, and records the run in the candidate's window. Never delays or fails the caller.
  /// The inputs were validated against `validatedFor` (the stable version): a candidate that declares other inputs
  /// or another contract (ranges, batch bound) is not shadowed with them.
  /// Returns the candidate's version when it was handed the inputs (the call's audit record names it).
  @discardableResult
  func shadow(
    _ route: Route, principal: String, validatedFor stableDescriptor: ModelDescriptor, inputs: [Tensor],
    outOfDistribution: Bool, stableLabels: [Int]?
  ) -> String? {
    guard let version = route.shadow else { return nil }
    let limit = settings.shadowMaxConcurrent
    guard shadowsInFlight.add(1, ordering: .relaxed).newValue <= limit else {
      shadowsInFlight.subtract(1, ordering: .relaxed)
      rollouts.withLock { all in
        if all[route.model]?.id == route.rolloutID { all[route.model]?.shadowSkipped += 1 }
      }
      metrics.recordRolloutShadowSkipped(model: route.model)
      return nil
    }
    let model: any ServableModel
    do { model = try repository.resolve(name: route.model, version: version) } catch {
      shadowsInFlight.subtract(1, ordering: .relaxed)
      return nil
    }
    guard model.descriptor.inputs == stableDescriptor.inputs, model.descriptor.contract == stableDescriptor.contract
    else {
      shadowsInFlight.subtract(1, ordering: .relaxed)
      return nil
    }
    Task(priority: .background) { [self] in
      defer { shadowsInFlight.subtract(1, ordering: .relaxed) }
      let started = ContinuousClock.now
      var outcome = Outcome(
        principal: principal, latency: .zero, failed: false, outOfDistribution: outOfDistribution, labels: nil)
      do {
        let outputs = try await model.infer(InferenceRequest(inputs: inputs))
        let (labels, finite) = Self.labels(outputs)
        outcome.labels = labels
        outcome.failed = !finite
      } catch {
        outcome.failed = true
      }
      outcome.latency = ContinuousClock.now - started
      metrics.recordRolloutCall(model: route.model, role: "shadow")
      let verdict = rollouts.withLock { all -> Verdict? in
        guard all[route.model]?.id == route.rolloutID, all[route.model]?.state == .active else { return nil }
        if let a = stableLabels, let b = outcome.labels, !outcome.failed {
          all[route.model]?.shadowCompared += 1
          if a == b { all[route.model]?.shadowAgreed += 1 }
        }
        return all[route.model]?.observe(.candidate, outcome)
      }
      if let verdict { act(verdict) }
    }
    return version
  }

  /// The predicted labels of a call (arg-max per row of the first output when it holds scores, its values when it
  /// holds integer labels), and whether every floating-point output is finite.
  public static func labels(_ outputs: [Tensor]) -> (labels: [Int]?, finite: Bool) {
    let finite = outputs.allSatisfy(\.allFinite)
    guard let first = outputs.first else { return (nil, finite) }
    switch first.datatype {
    case .int64: return (first.values(as: Int64.self)?.map { Int(truncatingIfNeeded: $0) }, finite)
    case .int32: return (first.values(as: Int32.self)?.map { Int($0) }, finite)
    default:
      guard let values = first.floatingPointValues, let last = first.shape.last, last > 1, first.shape.count >= 2,
        let width = Int(exactly: last), values.count % width == 0
      else { return (nil, finite) }
      var labels: [Int] = []
      labels.reserveCapacity(values.count / width)
      var row = 0
      while row < values.count {
        var best = row
        for i in row..<(row + width) where values[i] > values[best] { best = i }
        labels.append(best - row)
        row += width
      }
      return (labels, finite)
    }
  }

  // MARK: operator actions

  /// Starts a rollout of `candidate` (nil: the newest bundle on disk) of `model`, with `plan`. The stable version is
  /// the one unpinned calls resolve to now. A candidate not loaded yet is loaded from its signed bundle, without
  /// retiring the stable version and without recording it as accepted (anti-rollback) until it is promoted.
  public func start(model: String, candidate: String?, plan: RolloutPlan, by principal: String)
    async throws(PalisadeError)
    -> Status
  {
    guard !model.isEmpty else { throw PalisadeError(.invalidArgument, "model is required") }
    guard plan.share > 0, plan.share <= 1 else { throw PalisadeError(.invalidArgument, "share must be in (0, 1]") }
    let target: String
    if let candidate {
      // Canonical form ("03" is version 3), as the repository names versions.
      guard let v = Int(candidate), v > 0, candidate.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
        throw PalisadeError(.invalidArgument, "candidate version must be a positive integer")
      }
      target = String(v)
    } else if let newest = bundles?.newestVersion(of: model) {
      target = String(newest)
    } else {
      throw PalisadeError(
        .invalidArgument, "candidate version is required (no bundle directories to pick the newest from)")
    }
    var stable = try resolveDefault(model)
    // A candidate already loaded as the newest version (a hot load before the rollout): the stable one is the next
    // newest ready version, never one an earlier rollout rolled back.
    if stable == target, let t = Int(target) {
      let rejected = rollouts.withLock { all in
        all[model].flatMap { $0.state == .rolledBack ? $0.candidateVersion : nil }
      }
      let others = repository.versions(of: model).filter {
        $0 != target && $0 != rejected && repository.isReady(name: model, version: $0)
      }
      if others.allSatisfy({ Int($0).map { $0 < t } ?? false }),
        let next = others.max(by: { (Int($0) ?? 0) < (Int($1) ?? 0) })
      {
        stable = next
      }
    }
    guard target != stable else {
      throw PalisadeError(
        .invalidArgument,
        "version \(target.sanitizedForMessage) is already the stable version of '\(model.sanitizedForMessage)'")
    }
    let id = UUID().uuidString.lowercased()
    // Routing state first (the candidate not yet active): unpinned calls keep going to the stable version while
    // the candidate loads, even though it is the newer one.
    var rollout = Rollout(id: id, model: model, stable: stable, candidate: target, plan: plan)
    rollout.state = .aborted
    rollout.reason = Rollout.loadingReason
    rollout.loading = true
    // The rollout this one replaces (ended, perhaps still holding a rolled-back candidate off unpinned traffic)
    // comes back if this one cannot start.
    let installed = rollouts.withLock { all -> (ok: Bool, previous: Rollout?) in
      // One start at a time: an active rollout, or one whose candidate is still loading, holds the model.
      if let existing = all[model], existing.state == .active || existing.loading { return (false, nil) }
      let previous = all[model]
      all[model] = rollout
      return (true, previous)
    }
    guard installed.ok else {
      throw PalisadeError(
        .failedPrecondition,
        "model '\(model.sanitizedForMessage)' already has an active rollout, or one whose candidate is loading")
    }
    let previous = installed.previous
    refreshRouted()
    if !repository.isReady(name: model, version: target) {
      guard let bundles, let version = Int(target) else {
        clear(model: model, id: id, restoring: previous)
        throw PalisadeError(
          .notFound, "version \(target.sanitizedForMessage) of model '\(model.sanitizedForMessage)' is not loaded")
      }
      do throws(PalisadeError) { try await bundles.loadCandidate(name: model, version: version) } catch {
        clear(model: model, id: id, restoring: previous)
        throw error
      }
    }
    let status = rollouts.withLock { all -> Status? in
      guard var r = all[model], r.id == id else { return nil }
      r.state = .active
      r.reason = ""
      r.loading = false
      r.restart()
      all[model] = r
      return r.status
    }
    guard let status else { throw PalisadeError(.unavailable, "the rollout was replaced while its candidate loaded") }
    metrics.recordRollout(event: "start", model: model)
    metrics.setRolloutState(model: model, state: .active)
    logger.notice(
      "rollout started",
      metadata: [
        "model": "\(model)", "stable": "\(stable)", "candidate": "\(target)", "mode": "\(plan.mode.rawValue)",
        "share": "\(plan.share)", "rollout_id": "\(id)", "by": "\(principal)",
      ])
    await auditor.event(
      .other("rollout_start"), principal: principal, model: model, version: target, status: "OK",
      reason: "\(plan.mode.rawValue) rollout of version \(target) against \(stable)",
      details: ["rollout_id": id, "stable": stable, "mode": plan.mode.rawValue, "share": "\(plan.share)"])
    return status
  }

  /// Starts the rollouts planned in the config (at boot, once the stable versions are loaded); failures are logged.
  public func startPlanned() async {
    for p in settings.models {
      do {
        _ = try await start(model: p.model, candidate: p.candidate, plan: p.plan, by: "config")
      } catch {
        logger.error("planned rollout not started", metadata: ["model": "\(p.model)", "reason": "\(error.message)"])
      }
    }
  }

  /// Promotes `model`'s active rollout now.
  public func promote(model: String, by principal: String) async throws(PalisadeError) -> Status {
    let verdict = rollouts.withLock { all -> Verdict? in
      guard var r = all[model], r.state == .active else { return nil }
      defer { all[model] = r }
      return r.end(.promoted, reason: "promoted by \(principal)")
    }
    guard let verdict else {
      throw PalisadeError(.failedPrecondition, "model '\(model.sanitizedForMessage)' has no active rollout")
    }
    await perform(verdict, by: principal)
    return try statusOrThrow(model)
  }

  /// Aborts `model`'s active rollout: the candidate stops taking traffic at once and stays loaded.
  public func abort(model: String, reason: String, by principal: String) async throws(PalisadeError) -> Status {
    let why = reason.isEmpty ? "aborted by \(principal)" : "aborted by \(principal): \(reason)"
    let verdict = rollouts.withLock { all -> Verdict? in
      guard var r = all[model], r.state == .active else { return nil }
      defer { all[model] = r }
      return r.end(.aborted, reason: why)
    }
    guard let verdict else {
      throw PalisadeError(.failedPrecondition, "model '\(model.sanitizedForMessage)' has no active rollout")
    }
    await perform(verdict, by: principal)
    return try statusOrThrow(model)
  }

  /// Every rollout (active or ended and still routing), or `model`'s.
  public func status(model: String? = nil) -> [Status] {
    rollouts.withLock { all in
      all.values.filter { model == nil || $0.model == model }.sorted { $0.model < $1.model }.map(\.status)
    }
  }

  private func statusOrThrow(_ model: String) throws(PalisadeError) -> Status {
    guard let s = status(model: model).first else {
      throw PalisadeError(.notFound, "model '\(model.sanitizedForMessage)' has no rollout")
    }
    return s
  }

  // MARK: verdicts

  /// A rollout's end, decided under the lock and carried out after it.
  struct Verdict: Sendable {
    var model: String
    var id: String
    var state: State
    var stable: String
    var candidate: String
    var reason: String
    var breach: Bool
  }

  /// Acts on a verdict reached on a call's path: the state already changed (routing already follows it); the
  /// audit record, metrics and (for a promotion) retiring the stable version happen off the call's path.
  private func act(_ verdict: Verdict) {
    Task { await perform(verdict, by: "rollout") }
  }

  private func perform(_ v: Verdict, by principal: String) async {
    metrics.setRolloutState(model: v.model, state: v.state)
    let details = ["rollout_id": v.id, "stable": v.stable, "candidate": v.candidate]
    switch v.state {
    case .promoted:
      metrics.recordRollout(event: "promote", model: v.model)
      logger.notice(
        "rollout promoted", metadata: ["model": "\(v.model)", "version": "\(v.candidate)", "reason": "\(v.reason)"])
      await auditor.event(
        .other("rollout_promote"), principal: principal, model: v.model, version: v.candidate, status: "OK",
        reason: v.reason, details: details)
      if let bundles, let version = Int(v.candidate) {
        do throws(PalisadeError) { try bundles.accept(name: v.model, version: version) } catch {
          logger.error(
            "promoted version not recorded as accepted",
            metadata: ["model": "\(v.model)", "reason": "\(error.message)"])
        }
      }
      // The promoted version serves every unpinned call; the stable one retires, as after a plain load.
      repository.remove(name: v.model, version: v.stable)
    case .rolledBack:
      metrics.recordRollout(event: "breach", model: v.model)
      metrics.recordRollout(event: "rollback", model: v.model)
      logger.warning(
        "rollout rolled back", metadata: ["model": "\(v.model)", "version": "\(v.candidate)", "reason": "\(v.reason)"])
      await auditor.event(
        .other("rollout_breach"), principal: principal, model: v.model, version: v.candidate, status: "BREACH",
        reason: v.reason, details: details)
      await auditor.event(
        .other("rollout_rollback"), principal: principal, model: v.model, version: v.candidate, status: "OK",
        reason: "candidate \(v.candidate) stopped taking traffic; \(v.stable) serves; the candidate stays loaded",
        details: details)
    case .aborted:
      metrics.recordRollout(event: "abort", model: v.model)
      logger.notice(
        "rollout aborted", metadata: ["model": "\(v.model)", "version": "\(v.candidate)", "reason": "\(v.reason)"])
      await auditor.event(
        .other("rollout_abort"), principal: principal, model: v.model, version: v.candidate, status: "OK",
        reason: v.reason, details: details)
    case .active:
      break
    }
  }

  // MARK: state

  private func resolveDefault(_ model: String) throws(PalisadeError) -> String {
    if let current = rollouts.withLock({ all in
      all[model].flatMap { $0.routes ? ($0.state == .promoted ? $0.candidateVersion : $0.stableVersion) : nil }
    }),
      repository.isReady(name: model, version: current)
    {
      return current
    }
    return try repository.resolve(name: model, version: "").descriptor.version
  }

  private func clear(model: String, id: String, restoring previous: Rollout?) {
    rollouts.withLock { all in if all[model]?.id == id { all[model] = previous } }
    refreshRouted()
  }

  private func dropRouting(model: String, version: String) {
    let dropped = rollouts.withLock { all -> Verdict? in
      guard var r = all[model], r.routes, r.stableVersion == version || r.candidateVersion == version else {
        return nil
      }
      // A promotion retires the stable version itself: that ends the routing, nothing else. The rollout stays
      // listed in the status.
      let verdict = r.state == .active ? r.end(.aborted, reason: "version \(version) left the repository") : nil
      r.routes = false
      all[model] = r
      return verdict
    }
    refreshRouted()
    if let dropped { act(dropped) }
  }

  private func refreshRouted() {
    routed.store(rollouts.withLock { $0.values.filter(\.routes).count }, ordering: .releasing)
  }
}
