public import Prometheus
import Synchronization
public import PalisadeTransport

/// The server's Prometheus metrics, registered in a registry the server owns (no global metrics system).
///
/// Label values are bounded sets (RPC names from the service definition, status code names), never
/// caller-controlled strings, so a caller cannot blow up the series count.
public final class ServerMetrics: TransportObserver, Sendable {
  /// The registry `/metrics` renders.
  public let registry: PrometheusCollectorRegistry
  private let latencyBuckets: [Duration] = [
    .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
    .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
    .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
  ]

  public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
    self.registry = registry
    var stages: [Stage: DurationHistogram] = [:]
    let buckets: [Duration] = [
      .microseconds(5), .microseconds(10), .microseconds(25), .microseconds(50), .microseconds(100),
      .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2.5), .milliseconds(5),
      .milliseconds(10), .milliseconds(25), .milliseconds(100), .milliseconds(500), .seconds(2),
    ]
    for stage in Stage.allCases {
      stages[stage] = registry.makeDurationHistogram(
        descriptor: MetricNameDescriptor(
          namespace: "palisade", metricName: "stage_duration", unitName: "seconds",
          helpText: "Time a ModelInfer call spends in each pipeline stage"),
        labels: [("stage", stage.rawValue)], buckets: buckets)
    }
    stageHistograms = stages
  }

  /// Counts one finished RPC and records its latency. The handles are resolved once per (method, code) and kept:
  /// the registry lookup (a lock, label hashing) is not paid per call.
  public func recordRPC(method: String, code: String, duration: Duration) {
    let key = RPCKey(method: method, code: code)
    let handles = rpcHandles.withLock { cache -> RPCHandles in
      if let found = cache[key] { return found }
      let made = RPCHandles(
        count: registry.makeCounter(
          descriptor: MetricNameDescriptor(
            namespace: "palisade", metricName: "grpc_requests", unitName: "total",
            helpText: "Finished gRPC calls by method and status code"),
          labels: [("rpc", method), ("code", code)]),
        latency: registry.makeDurationHistogram(
          descriptor: MetricNameDescriptor(
            namespace: "palisade", metricName: "grpc_request_duration", unitName: "seconds",
            helpText: "gRPC call latency from the first request byte to the final status"),
          labels: [("rpc", method)], buckets: latencyBuckets))
      // Methods and codes are bounded sets (the service definition, the status codes).
      cache[key] = made
      return made
    }
    handles.count.increment()
    handles.latency.record(duration)
  }

  private struct RPCKey: Hashable {
    let method: String
    let code: String
  }
  private struct RPCHandles {
    let count: Counter
    let latency: DurationHistogram
  }
  private let rpcHandles = Mutex<[RPCKey: RPCHandles]>([:])

  /// Counts a refused caller identity (the reason is a fixed enum description).
  public func recordIdentityRefused(reason: String) {
    registry.makeCounter(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "identity_refusals", unitName: "total",
        helpText: "Calls refused because the client certificate does not carry a usable SPIFFE identity"),
      labels: [("reason", reason)]
    ).increment()
  }

  /// Counts a refused token by reason label.
  public func recordTokenRefused(reason: String) {
    counter("token_refusals", "Calls refused because the bearer token is missing or invalid", [("reason", reason)])
  }

  /// Counts a policy denial.
  public func recordPolicyDenied(rpc: String) {
    counter("policy_denials", "Calls the authorisation policy refused", [("rpc", rpc)])
  }

  /// Counts a rate-limited call.
  public func recordRateLimited(rpc: String) {
    counter("rate_limited", "Calls refused by a per-principal rate limit", [("rpc", rpc)])
  }

  /// Counts a credential or policy reload attempt.
  public func recordReload(kind: String, success: Bool) {
    counter(
      "credential_reloads", "Reloads of certificates, CA bundles, JWKS and policy by kind and result",
      [("kind", kind), ("result", success ? "success" : "failure")])
  }

  /// Sets the seconds until the server certificate expires.
  public func setServerCertificateExpiry(seconds: Double) {
    registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "server_certificate_expiry", unitName: "seconds",
        helpText: "Seconds until the server's TLS certificate expires")
    ).set(to: seconds)
  }

  // MARK: Pipeline stages

  /// The stages a ModelInfer passes through, each timed in `palisade_stage_duration_seconds{stage}`.
  public enum Stage: String, Sendable, CaseIterable {
    case authorise, resolve, validate, screen, queue, compute, harden, encode
  }

  private let stageHistograms: [Stage: DurationHistogram]

  /// Records the time one call spent in `stage`.
  public func recordStage(_ stage: Stage, _ duration: Duration) {
    stageHistograms[stage]?.record(duration)
  }

  /// Counts a model whose weights changed in memory.
  public func recordIntegrityFailure(model: String) {
    counter(
      "integrity_failures", "Loaded model files whose in-memory bytes no longer match their signed digest",
      [("model", model)])
  }

  /// Counts an audit record written or lost.
  public func recordAudit(success: Bool) {
    counter(
      "audit_records", "Audit records appended (written) or refused by the log (failed)",
      [("result", success ? "written" : "failed")])
  }

  /// Counts a bundle load (`loaded`) or a load refused (`refused`: unreadable or vanished directory, a bundle
  /// that does not verify); a refused load leaves the served version in place.
  public func recordModelLoad(result: String) {
    counter(
      "model_loads", "Bundle loads by result (loaded, refused); a refused load leaves the served version",
      [("result", result)])
  }

  /// 1 while the audit log takes records, 0 while it is failed (calls are refused).
  public func setAuditAvailable(_ available: Bool) {
    registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "audit_available",
        unitName: "", helpText: "1 while the audit log takes records; 0 while it is failed and calls are refused")
    ).set(to: available ? 1 : 0)
  }

  /// Counts the audit log failing (a write or fsync error).
  public func recordAuditFailure() {
    counter("audit_failures", "Times the audit log failed (write or fsync error) and calls started being refused", [])
  }

  /// Counts the audit log reopened after a failure.
  public func recordAuditRecovery() {
    counter("audit_recoveries", "Times the audit log was reopened after a failure and serving resumed", [])
  }

  /// Counts a request refused or dropped by the hardening pipeline (reason is a fixed identifier).
  public func recordRejection(reason: String) {
    counter(
      "rejections", "Requests refused or dropped by validation, screening or scheduling, by reason",
      [("reason", reason)])
  }

  /// Counts an out-of-distribution request.
  public func recordOutOfDistribution(model: String, action: String) {
    counter(
      "ood_flagged", "Requests scored out of distribution, by model and action taken",
      [("model", model), ("action", action)])
  }

  /// Counts an extraction-monitor alarm.
  public func recordExtractionAlarm(model: String, detector: String) {
    counter(
      "extraction_alarms", "Extraction-monitor alarms by model and detector",
      [("model", model), ("detector", detector)])
  }

  /// Counts an automatic quarantine and sets the number in force.
  public func recordQuarantine(active: Int) {
    counter("quarantines", "Principals quarantined automatically", [])
    setQuarantinesActive(active)
  }

  /// Sets the number of automatic quarantines in force.
  public func setQuarantinesActive(_ n: Int) {
    registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "quarantines_active", unitName: "",
        helpText: "Automatic quarantines in force")
    ).set(to: Double(n))
  }

  /// Sets a model's circuit-breaker state (0 closed, 1 half-open, 2 open).
  public func setBreakerState(model: String, state: CircuitBreaker.State) {
    registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "circuit_breaker_state",
        unitName: "", helpText: "Per-model circuit breaker: 0 closed, 1 half-open, 2 open"),
      labels: [("model", model)]
    ).set(to: state.gaugeValue)
  }

  /// A setter for a model's queue depth gauge.
  public func queueDepthGauge(model: String) -> @Sendable (Int) -> Void {
    let gauge = registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "queue_depth", unitName: "", helpText: "Requests waiting to run, by model"),
      labels: [("model", model)])
    return { gauge.set(to: Double($0)) }
  }

  /// A recorder for a model's batch sizes (requests per execution).
  public func batchSizeRecorder(model: String) -> @Sendable (Int) -> Void {
    let histogram = registry.makeValueHistogram(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "batch_size", unitName: "",
        helpText: "Requests per model execution (dynamic batching)"),
      labels: [("model", model)], buckets: [1, 2, 4, 8, 16, 32, 64, 128])
    return { histogram.record(Double($0)) }
  }

  /// A setter for the population stability index of each feature of one model input.
  public func driftGauges(model: String, input: String, features: Int) -> @Sendable ([Double]) -> Void {
    let gauges = (0..<min(features, 512)).map { f in
      registry.makeGauge(
        descriptor: MetricNameDescriptor(
          namespace: "palisade", metricName: "feature_drift_psi",
          unitName: "",
          helpText:
            "Population stability index of each input feature over the recent window, against the bundle's reference statistics"
        ),
        labels: [("model", model), ("input", input), ("feature", String(f))])
    }
    return { values in for (g, v) in zip(gauges, values) { g.set(to: v) } }
  }

  /// Increments a counter, resolving its handle in the registry only the first time (some are per call, e.g.
  /// `audit_records`). Names and label values are bounded sets, so the cache is bounded too.
  private func counter(_ name: String, _ help: String, _ labels: [(String, String)]) {
    var key = name
    for (k, v) in labels {
      key += "\u{0}"
      key += k
      key += "="
      key += v
    }
    let handle = counters.withLock { cache -> Counter in
      if let found = cache[key] { return found }
      let made = registry.makeCounter(
        descriptor: MetricNameDescriptor(namespace: "palisade", metricName: name, unitName: "total", helpText: help),
        labels: labels)
      cache[key] = made
      return made
    }
    handle.increment()
  }
  private let counters = Mutex<[String: Counter]>([:])

  /// Counts a connection or stream the transport refused before it reached a service.
  public func transportRefused(reason: String) {
    counter(
      "transport_refusals", "Connections and streams refused by the transport (caps, timeouts, size limits, budgets)",
      [("reason", reason)])
  }

  /// Counts an admin-port connection refused or closed by its limits.
  public func recordAdminRefusal(reason: String) {
    counter("admin_refusals", "Admin HTTP connections refused or closed by their limits", [("reason", reason)])
  }

  /// Counts a `/metrics` request answered with the last render, over the render budget.
  public func recordAdminMetricsCached() {
    counter(
      "admin_metrics_cached",
      "Answers to /metrics that repeated the last render: more were asked for than "
        + "admin.max_metrics_renders_per_second", [])
  }

  /// Model versions holding per-version state in one cache (`scheduler`: queues and breakers, `screening`:
  /// monitors). It follows the loaded versions: a count that only grows across hot swaps is a leak.
  public func setModelVersionStates(cache: String, _ count: Int) {
    registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "model_version_states",
        unitName: "",
        helpText:
          "Model versions holding per-version state, by cache (scheduler: queues and breakers; screening: monitors)"),
      labels: [("cache", cache)]
    ).set(to: Double(count))
  }

  /// Models the runtimes hold in memory (loaded versions, plus unloaded ones until their last call finished).
  public func setModelsInMemory(_ count: Int) {
    registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "models_in_memory",
        unitName: "",
        helpText: "Models the runtimes hold in memory: loaded versions, and unloaded ones until their last call ended")
    ).set(to: Double(count))
  }

  // MARK: Rollouts

  /// Counts a rollout event (`start`, `promote`, `breach`, `rollback`, `abort`) of `model`.
  public func recordRollout(event: String, model: String) {
    counter(
      "rollout_events", "Rollout starts, promotions, threshold breaches, rollbacks and aborts, by model",
      [("model", model), ("event", event)])
  }

  /// Counts a call observed by an active rollout (`stable`, `candidate`, or a `shadow` run on the candidate).
  public func recordRolloutCall(model: String, role: String) {
    counter(
      "rollout_calls", "Calls observed by active rollouts, by model and role (stable, candidate, shadow)",
      [("model", model), ("role", role)])
  }

  /// Counts a shadow run skipped because the shadow bound (`rollouts.shadow_max_concurrent`) was reached.
  public func recordRolloutShadowSkipped(model: String) {
    counter(
      "rollout_shadow_skipped", "Shadow runs skipped because the shadow bound was reached, by model", [("model", model)]
    )
  }

  /// Sets a model's rollout state: 1 active, 2 promoted, 3 rolled back, 4 aborted.
  public func setRolloutState(model: String, state: RolloutController.State) {
    let value: Double =
      switch state {
      case .active: 1
      case .promoted: 2
      case .rolledBack: 3
      case .aborted: 4
      }
    registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "rollout_state", unitName: "",
        helpText: "A model's latest rollout: 1 active, 2 promoted, 3 rolled back, 4 aborted"),
      labels: [("model", model)]
    ).set(to: value)
  }

  /// Runs `update` before every rendering (gauges read from elsewhere).
  public func beforeRender(_ update: @escaping @Sendable () -> Void) {
    renderHooks.withLock { $0.append(update) }
  }
  private let renderHooks = Mutex<[@Sendable () -> Void]>([])

  /// Open gRPC connections.
  public func connectionsOpen(_ count: Int) {
    registry.makeGauge(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "connections_open", unitName: "", helpText: "Open gRPC connections"),
      labels: []
    ).set(to: Double(count))
  }

  /// The exposition text.
  public func render() -> [UInt8] {
    for hook in renderHooks.withLock({ $0 }) { hook() }
    return registry.emitToBuffer()
  }
}
