import Foundation
public import Logging
public import PalisadeCore
import PalisadePolicy
import PalisadeSupport
public import PalisadeScreening
import Synchronization

/// Pipeline stage 6: screens validated inputs before they are scheduled.
///
/// - scores them against the bundle's reference statistics (``OODScorer``) and flags or rejects them as the
///   manifest's `screening_policy` says, unless the policy's `containment.screening` overrides it;
/// - feeds the per-feature drift windows (``DriftMonitor``, exported as metrics);
/// - feeds the caller's stream into the ``ExtractionMonitor``; an alarm is counted and logged, and quarantines the
///   principal when the policy's `containment.extraction` is `quarantine`.
public final class InputScreener: Sendable {
  public struct Settings: Sendable, Equatable {
    /// Rows in each drift window.
    public var driftWindow: Int
    /// Whether the extraction monitor runs.
    public var extractionMonitor: Bool
    public var extraction: ExtractionMonitor.Settings
    public init(
      driftWindow: Int = 1000, extractionMonitor: Bool = true, extraction: ExtractionMonitor.Settings = .defaults
    ) {
      self.driftWindow = driftWindow
      self.extractionMonitor = extractionMonitor
      self.extraction = extraction
    }
    public static let defaults = Settings()
  }

  /// What screening found, for the response and the audit record.
  public struct Outcome: Sendable {
    public var score: OODScorer.Score?
    public var outOfDistribution: Bool
  }

  struct ModelScreen: Sendable {
    var scorer: OODScorer
    var drift: DriftMonitor?
    var extraction: ExtractionMonitor?
    /// Inputs with reference statistics: the only ones converted for the OOD score and drift.
    var referenced: Set<String>
  }

  let settings: Settings
  let policy: PolicyStore
  let quarantines: QuarantineStore
  let metrics: ServerMetrics
  let logger: Logger
  let auditor: Auditor?
  /// A loaded model: name, version and bundle digest (a reload with another bundle gets fresh monitors).
  struct ScreenKey: Hashable, Sendable {
    var name: String
    var version: String
    var bundle: String
  }
  private let screens = Mutex<[ScreenKey: ModelScreen]>([:])

  public init(
    settings: Settings, policy: PolicyStore, quarantines: QuarantineStore, metrics: ServerMetrics, logger: Logger,
    auditor: Auditor? = nil
  ) {
    self.auditor = auditor
    self.settings = settings
    self.policy = policy
    self.quarantines = quarantines
    self.metrics = metrics
    self.logger = logger
  }

  /// Drops the screening state (OOD scorer, drift windows, the extraction monitor's per-principal streams) of model
  /// versions that left the repository.
  public func release(_ descriptors: [ModelDescriptor]) {
    let count = screens.withLock { s -> Int in
      for d in descriptors { s[Self.key(d)] = nil }
      return s.count
    }
    metrics.setModelVersionStates(cache: "screening", count)
  }

  /// Model versions with screening state (tests, and the `palisade_model_version_states` gauge).
  public var screenCount: Int { screens.withLock { $0.count } }

  static func key(_ d: ModelDescriptor) -> ScreenKey {
    ScreenKey(name: d.name, version: d.version, bundle: d.properties["bundle_digest"] ?? "")
  }

  func screen(for d: ModelDescriptor) -> ModelScreen { lookup(d).screen }

  /// The screening state of `d`, made on first use, and whether this lookup made it.
  func lookup(_ d: ModelDescriptor) -> (screen: ModelScreen, made: Bool) {
    let key = Self.key(d)
    let (screen, made, count) = screens.withLock { s -> (ModelScreen, Bool, Int) in
      if let existing = s[key] { return (existing, false, s.count) }
      var drift: DriftMonitor? = nil
      if !d.screening.references.isEmpty {
        let setters = Dictionary(
          uniqueKeysWithValues: d.screening.references.map { name, ref in
            (name, metrics.driftGauges(model: d.name, input: name, features: ref.mean.count))
          })
        drift = DriftMonitor(profile: d.screening, window: settings.driftWindow) { input, psi in setters[input]?(psi) }
      }
      var extraction: ExtractionMonitor? = nil
      if settings.extractionMonitor, let (input, features) = ExtractionMonitor.monitoredInput(d) {
        extraction = ExtractionMonitor(input: input, features: features, settings: settings.extraction)
      }
      let made = ModelScreen(
        scorer: OODScorer(d.screening), drift: drift, extraction: extraction,
        referenced: Set(d.screening.references.keys))
      s[key] = made
      return (made, true, s.count)
    }
    if made { metrics.setModelVersionStates(cache: "screening", count) }
    return (screen, made)
  }

  /// Screens `inputs` (validated, in declaration order) of a call to `descriptor`'s model.
  public func screen(_ inputs: [Tensor], descriptor: ModelDescriptor, call: CallContext) async throws(PalisadeError)
    -> Outcome
  {
    try await screen(inputs, descriptor: descriptor, call: call, state: screen(for: descriptor))
  }

  func screen(_ inputs: [Tensor], descriptor: ModelDescriptor, call: CallContext, state screen: ModelScreen)
    async throws(PalisadeError) -> Outcome
  {
    let containment = policy.policy.containment
    // Without reference statistics there is nothing to score and no drift to follow: nothing is converted, and
    // only the extraction monitor (PRADA needs no statistics) looks at the rows.
    let floating = screen.referenced.isEmpty ? nil : FloatingInputs(inputs, only: screen.referenced)
    let threshold = descriptor.screening.threshold
    // Per-row distances of the monitored input, taken while scoring, give the extraction monitor a verdict per
    // row: one odd row in a batch of 32 is one out-of-distribution row, not 32.
    let scored = floating.map { screen.scorer.score($0, rowsOf: threshold == nil ? nil : screen.extraction?.input) }
    let score = scored?.score
    var ood = false
    if let score, let threshold, score.mahalanobis > threshold { ood = true }
    var verdicts = ExtractionMonitor.RowVerdicts.unknown
    if score != nil {
      if let rows = scored?.rows, let threshold {
        verdicts = .each(rows.map { $0 > threshold })
      } else {
        verdicts = .all(ood)
      }
    }
    if let extraction = screen.extraction,
      let alarm = extraction.observe(principal: call.identity.spiffeID.description, inputs: inputs, verdicts: verdicts)
    {
      await raise(alarm, descriptor: descriptor, call: call, containment: containment)
    }
    if ood {
      let action: ScreeningProfile.Action =
        switch containment.screening {
        case .manifest: descriptor.screening.action
        case .flag: .flag
        case .reject: .reject
        }
      metrics.recordOutOfDistribution(model: descriptor.name, action: action.rawValue)
      logger.notice(
        "out-of-distribution input",
        metadata: [
          "request_id": "\(call.requestID)", "principal": "\(call.identity.spiffeID)", "model": "\(descriptor.name)",
          "score": "\(score.map { String(format: "%.2f", $0.mahalanobis) } ?? "")", "action": "\(action.rawValue)",
        ])
      if action == .reject {
        metrics.recordRejection(reason: "out_of_distribution")
        throw PalisadeError(
          .invalidArgument,
          "the inputs lie outside the model's training distribution (screening score above its threshold)")
      }
    }
    if let floating { screen.drift?.observe(floating) }
    return Outcome(score: score, outOfDistribution: ood)
  }

  private func raise(
    _ alarm: ExtractionMonitor.Alarm, descriptor: ModelDescriptor, call: CallContext, containment: Policy.Containment
  ) async {
    metrics.recordExtractionAlarm(model: descriptor.name, detector: alarm.detector.rawValue)
    let quarantine = containment.extraction == .quarantine
    logger.warning(
      "extraction monitor alarm",
      metadata: [
        "request_id": "\(call.requestID)", "principal": "\(call.identity.spiffeID)", "model": "\(descriptor.name)",
        "detector": "\(alarm.detector.rawValue)", "statistic": "\(String(format: "%.3f", alarm.statistic))",
        "action": "\(quarantine ? "quarantine" : "alert")",
      ])
    guard quarantine else { return }
    let now = Date()
    quarantines.add(
      call.identity.spiffeID,
      reason: "extraction monitor (\(alarm.detector.rawValue), statistic \(String(format: "%.3f", alarm.statistic)))",
      model: descriptor.name, until: now.addingTimeInterval(TimeInterval(containment.quarantineSeconds)), now: now)
    metrics.recordQuarantine(active: quarantines.list(now: now).count)
    await auditor?.event(
      .quarantine, principal: call.identity.spiffeID.description, model: descriptor.name,
      reason: "extraction monitor: \(alarm.detector.rawValue) statistic \(String(format: "%.3f", alarm.statistic))",
      details: [
        "until": RFC3339.string(
          secondsSince1970: now.addingTimeInterval(TimeInterval(containment.quarantineSeconds)).timeIntervalSince1970)
      ])
  }
}
