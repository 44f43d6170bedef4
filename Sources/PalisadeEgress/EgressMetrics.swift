import CoreMetrics
public import Prometheus

/// The sidecar's metrics: swift-metrics counters and gauges backed by a Prometheus registry the sidecar owns (no
/// global metrics system), rendered on the admin port's `/metrics`.
///
/// Labels are bounded: destination names come from the config (unlisted hosts are `unlisted`), reasons from
/// ``BlockReason``.
public final class EgressMetrics: Sendable {
  public let registry: PrometheusCollectorRegistry
  private let factory: PrometheusMetricsFactory

  public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
    self.registry = registry
    self.factory = PrometheusMetricsFactory(registry: registry)
  }

  func allowed(destination: String, requestBytes: Int, responseBytes: Int) {
    Counter(
      label: "palisade_egress_requests_total",
      dimensions: [("result", "allowed"), ("reason", ""), ("destination", destination)],
      factory: factory
    ).increment()
    Counter(label: "palisade_egress_request_bytes_total", dimensions: [("destination", destination)], factory: factory)
      .increment(by: requestBytes)
    Counter(label: "palisade_egress_response_bytes_total", dimensions: [("destination", destination)], factory: factory)
      .increment(by: responseBytes)
  }

  func blocked(reason: BlockReason, destination: String?) {
    Counter(
      label: "palisade_egress_requests_total",
      dimensions: [("result", "blocked"), ("reason", reason.rawValue), ("destination", destination ?? "unlisted")],
      factory: factory
    ).increment()
  }

  func upstreamError(destination: String) {
    Counter(
      label: "palisade_egress_upstream_errors_total", dimensions: [("destination", destination)], factory: factory
    )
    .increment()
  }

  func report(delivered: Bool, channel: String) {
    Counter(
      label: "palisade_egress_reports_total",
      dimensions: [("channel", channel), ("result", delivered ? "sent" : "failed")],
      factory: factory
    ).increment()
  }

  func tunnel(destination: String) {
    Counter(
      label: "palisade_egress_connect_tunnels_total", dimensions: [("destination", destination)], factory: factory
    )
    .increment()
  }

  /// A connection refused at accept (over a cap) or closed for being too slow (a timeout), or a request refused
  /// for the in-flight body budget.
  /// A `/metrics` request answered with the last render, over the render budget.
  func metricsCached() {
    Counter(label: "palisade_egress_admin_metrics_cached_total", factory: factory).increment()
  }

  func connectionRefused(listener: String, reason: String) {
    Counter(
      label: "palisade_egress_connections_refused_total", dimensions: [("listener", listener), ("reason", reason)],
      factory: factory
    ).increment()
  }

  func setOpenConnections(listener: String, _ count: Int) {
    Gauge(label: "palisade_egress_open_connections", dimensions: [("listener", listener)], factory: factory)
      .record(count)
  }

  func setInflightBodyBytes(_ bytes: Int) {
    Gauge(label: "palisade_egress_inflight_body_bytes", factory: factory).record(bytes)
  }

  func setFingerprints(canaries: Int, weightWindows: Int, bundles: Int) {
    Gauge(label: "palisade_egress_canary_tokens", factory: factory).record(canaries)
    Gauge(label: "palisade_egress_weight_windows", factory: factory).record(weightWindows)
    Gauge(label: "palisade_egress_bundles", factory: factory).record(bundles)
  }

  /// Prometheus text exposition.
  public func render() -> [UInt8] {
    var buffer: [UInt8] = []
    registry.emit(into: &buffer)
    return buffer
  }
}
