public import Prometheus

/// The server's Prometheus metrics, registered in a registry the server owns (no global metrics system).
///
/// Label values are bounded sets (RPC names from the service definition, status code names), never
/// caller-controlled strings, so a caller cannot blow up the series count.
public final class ServerMetrics: Sendable {
  /// The registry `/metrics` renders.
  public let registry: PrometheusCollectorRegistry
  private let latencyBuckets: [Duration] = [
    .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2),
    .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
    .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10),
  ]

  public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
    self.registry = registry
  }

  /// Counts one finished RPC and records its latency.
  public func recordRPC(method: String, code: String, duration: Duration) {
    registry.makeCounter(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "grpc_requests", unitName: "total",
        helpText: "Finished gRPC calls by method and status code"),
      labels: [("rpc", method), ("code", code)]
    ).increment()
    registry.makeDurationHistogram(
      descriptor: MetricNameDescriptor(
        namespace: "palisade", metricName: "grpc_request_duration", unitName: "seconds",
        helpText: "gRPC call latency from the first request byte to the final status"),
      labels: [("rpc", method)], buckets: latencyBuckets
    ).record(duration)
  }

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

  private func counter(_ name: String, _ help: String, _ labels: [(String, String)]) {
    registry.makeCounter(
      descriptor: MetricNameDescriptor(namespace: "palisade", metricName: name, unitName: "total", helpText: help),
      labels: labels
    ).increment()
  }

  /// The exposition text.
  public func render() -> [UInt8] {
    registry.emitToBuffer()
  }
}
