import Foundation
public import Logging
import OTel
public import ServiceLifecycle
import Tracing

/// OpenTelemetry tracing of inference calls (`tracing:` in the config; docs/operations.md, *Tracing*).
///
/// A traced call is one server span that continues the caller's W3C `traceparent`, with one child span per
/// pipeline stage. Spans carry the RPC, the server's request id, the resolved model and version and the gRPC
/// status: never tensor data, tokens, certificates or principals (the request id leads to the audit record, which
/// has the principal). A model name is recorded only once it has resolved to a loaded model, so no caller-chosen
/// string reaches the collector.
///
/// Off (the default), there is no `CallTracer`: the call path holds `nil` and makes no tracer call and no
/// allocation for tracing (docs/benchmarks.md, *Tracing off*).
public struct CallTracer: Sendable {
  let tracer: any Tracer
  /// `tracing.sample_ratio`: also the share of a caller's *sampled* traces that are recorded. The span starts before
  /// the caller is authenticated, so a caller's sampled flag alone must not make the server record (and export)
  /// every one of its calls.
  let sampleRatio: Double

  init(tracer: any Tracer, sampleRatio: Double = 1) {
    self.tracer = tracer
    self.sampleRatio = sampleRatio
  }

  /// The tracer and its export service (run it in the server's service group) for `settings`, or nil when tracing
  /// is off. Throws when swift-otel refuses the configuration, or when `OTEL_*` environment variables are set:
  /// swift-otel would let them override the config file (whose digest the attestation evidence reports), for
  /// example to send spans somewhere else.
  public static func make(_ settings: TracingSettings, logger: Logger, environment: [String: String]) throws
    -> (tracer: CallTracer, service: any Service)?
  {
    guard settings.enabled else { return nil }
    let overrides = environment.keys.filter { $0.hasPrefix("OTEL_") }.sorted()
    guard overrides.isEmpty else { throw TracingSetupError.environmentOverrides(overrides) }
    var c = OTel.Configuration.default
    c.serviceName = settings.serviceName
    c.resourceAttributes = ["service.version": PalisadeVersion.current]
    c.diagnosticLogger = .custom(logger)
    c.diagnosticLogLevel = .warning
    c.propagators = [.traceContext]
    c.logs.enabled = false
    c.metrics.enabled = false
    c.traces.enabled = true
    typealias Sampler = OTel.Configuration.TracesConfiguration.SamplerConfiguration
    c.traces.sampler = Sampler.parentBasedTraceIDRatio(ratio: settings.sampleRatio) ?? Sampler.parentBasedAlwaysOn
    c.traces.batchSpanProcessor.scheduleDelay = .milliseconds(settings.exportIntervalMs)
    c.traces.batchSpanProcessor.maxQueueSize = settings.maxQueuedSpans
    c.traces.batchSpanProcessor.maxExportBatchSize = settings.maxExportBatch
    c.traces.batchSpanProcessor.exportTimeout = .seconds(settings.exportTimeoutSeconds)
    c.traces.exporter = .otlp
    c.traces.otlpExporter.protocol = .grpc
    c.traces.otlpExporter.endpoint = settings.endpoint
    c.traces.otlpExporter.timeout = .seconds(settings.exportTimeoutSeconds)
    let backend: (tracer: any Tracer, service: any Service)
    do {
      let made = try OTel.makeTracingBackend(configuration: c)
      backend = (made.factory, made.service)
    } catch {
      throw TracingSetupError.backend("\(error)")
    }
    logger.info(
      "tracing on", metadata: ["endpoint": "\(settings.endpoint)", "sample_ratio": "\(settings.sampleRatio)"])
    return (CallTracer(tracer: backend.tracer, sampleRatio: settings.sampleRatio), backend.service)
  }

  /// Starts the server span of one call now, as a child of the caller's `traceparent` when it sent a valid one
  /// (anything else starts a new trace, silently: the tracer would log the header's text for each such call).
  /// `tracestate` is not carried on: it is a caller-chosen string, and nothing a caller chooses reaches the
  /// collector.
  package func startCall(rpc: String, traceparent: String?) -> CallSpans {
    let start = DefaultTracerClock.now
    var context = InstrumentationContext.topLevel
    if let traceparent, TraceHeaders.isValid(traceparent) {
      tracer.extract(
        TraceHeaders(traceparent: TraceHeaders.admitted(traceparent, ratio: sampleRatio)), into: &context,
        using: TraceHeaders.Extract())
    }
    let root = tracer.startSpan(
      "\(CallSpans.service)/\(rpc)", context: context, ofKind: .server, at: start, function: #function,
      file: #fileID, line: #line)
    root.attributes["rpc.system"] = "grpc"
    root.attributes["rpc.service"] = CallSpans.service
    root.attributes["rpc.method"] = rpc
    return CallSpans(tracer: tracer, root: root, start: start)
  }
}

/// Why tracing could not start; the server refuses to start with it (a config error, exit status 2).
public enum TracingSetupError: Error, CustomStringConvertible {
  case environmentOverrides([String])
  case backend(String)

  public var description: String {
    switch self {
    case .environmentOverrides(let names):
      "tracing: the environment sets \(names.joined(separator: ", ")); the tracing section of the config file is "
        + "the only source of tracing settings (unset them, or set the values there)"
    case .backend(let reason): "tracing: \(reason)"
    }
  }
}

/// A call's W3C `traceparent`, the carrier the tracer's propagator reads.
struct TraceHeaders: Sendable, CustomStringConvertible {
  var traceparent: String

  /// Never the header's text (the tracer logs its carrier when it cannot parse it).
  var description: String { "traceparent" }

  struct Extract: Extractor {
    func extract(key: String, from carrier: TraceHeaders) -> String? {
      key == "traceparent" ? carrier.traceparent : nil
    }
  }

  /// `traceparent` as the tracer should see it: a sampled flag is kept with probability `ratio` (the server's own
  /// draw, which the caller cannot steer the way it can steer a trace-id ratio), else cleared. The trace still
  /// continues (same trace id, parent), unrecorded. A valid header is 55 ASCII bytes with the flags last.
  static func admitted(_ traceparent: String, ratio: Double) -> String {
    guard ratio < 1, let flags = UInt8(traceparent.suffix(2), radix: 16), flags & 1 == 1 else { return traceparent }
    if ratio > 0, Double.random(in: 0..<1) < ratio { return traceparent }
    return String(traceparent.dropLast(2)) + String(format: "%02x", flags & ~1)
  }

  /// Version 00 as W3C Trace Context defines it: `00-<32 hex>-<16 hex>-<2 hex>`, lowercase, trace and parent ids
  /// not all zeros.
  static func isValid(_ header: String) -> Bool {
    let b = Array(header.utf8)
    guard b.count == 55, b[0] == UInt8(ascii: "0"), b[1] == UInt8(ascii: "0"), b[2] == UInt8(ascii: "-"),
      b[35] == UInt8(ascii: "-"), b[52] == UInt8(ascii: "-")
    else { return false }
    func hex(_ c: UInt8) -> Bool { (0x30...0x39).contains(c) || (0x61...0x66).contains(c) }
    guard b[3..<35].allSatisfy(hex), b[36..<52].allSatisfy(hex), b[53..<55].allSatisfy(hex) else { return false }
    return b[3..<35].contains { $0 != 0x30 } && b[36..<52].contains { $0 != 0x30 }
  }
}

/// One traced call: its server span and a child span per stage. A stage's span runs from the end of the previous
/// stage to the end of its own, the same boundaries as `palisade_stage_duration_seconds`. Used by the call's task
/// only (one stage after the other), hence unchecked.
package final class CallSpans: @unchecked Sendable {
  static let service = "inference.GRPCInferenceService"

  /// The stages a traced call records, in pipeline order (docs/architecture.md numbers them).
  package enum Stage: String, Sendable {
    case authenticate, authorise, resolve, validate, screen, compute, harden, encode, audit

    /// The stage that follows this one in a call that goes on.
    var next: Stage? {
      switch self {
      case .authenticate: .authorise
      case .authorise: .resolve
      case .resolve: .validate
      case .validate: .screen
      case .screen: .compute
      case .compute: .harden
      case .harden: .encode
      case .encode: .audit
      case .audit: nil
      }
    }

    /// The tracing stage a timed pipeline stage belongs to (the queue wait is part of `compute`).
    init(_ stage: ServerMetrics.Stage) {
      switch stage {
      case .authorise: self = .authorise
      case .resolve: self = .resolve
      case .validate: self = .validate
      case .screen: self = .screen
      case .queue, .compute: self = .compute
      case .harden: self = .harden
      case .encode: self = .encode
      }
    }
  }

  private let tracer: any Tracer
  private let root: any Span
  private var stageStart: DefaultTracerClock.Instant
  /// The stage in progress; nil once a stage failed or the audit ended.
  private var current: Stage? = .authenticate
  private var model: String?
  private var version: String?

  init(tracer: any Tracer, root: any Span, start: DefaultTracerClock.Instant) {
    self.tracer = tracer
    self.root = root
    self.stageStart = start
  }

  /// The server's request id (it leads to the access log line and the audit record).
  package func identified(requestID: String) {
    root.attributes["palisade.request_id"] = requestID
  }

  /// The call resolved to a loaded model: from here on every span names it.
  package func resolved(model: String, version: String) {
    self.model = model
    self.version = version
    root.attributes["palisade.model"] = model
    root.attributes["palisade.model.version"] = version
  }

  /// A stream message: its stream was authenticated once, at its start, so its first stage is authorise.
  package func skipAuthentication() { current = .authorise }

  /// `stage` ended now, successfully.
  package func ended(_ stage: Stage) {
    record(stage, failure: nil)
    current = stage.next
  }

  /// The stage in progress (or `stage`) ended now with `error`.
  package func failed(_ error: any Error, stage: Stage? = nil) {
    guard let s = stage ?? current else { return }
    record(s, failure: StatusMapping.statusCode(for: error))
    current = nil
  }

  /// Ends the call's span with its gRPC status (nil: OK); a stage still in progress failed with it.
  package func finish(_ error: (any Error)?) {
    if let error {
      if current != nil { failed(error) }
      root.attributes["rpc.grpc.status_code"] = StatusMapping.statusCode(for: error)
      root.setStatus(SpanStatus(code: .error, message: StatusMapping.codeName(for: error)))
    } else {
      root.attributes["rpc.grpc.status_code"] = 0
    }
    root.end(at: DefaultTracerClock.now)
  }

  private func record(_ stage: Stage, failure code: Int?) {
    let now = DefaultTracerClock.now
    let span = tracer.startSpan(
      stage.rawValue, context: root.context, ofKind: .internal, at: stageStart, function: #function, file: #fileID,
      line: #line)
    span.attributes["palisade.stage"] = stage.rawValue
    if let model, let version {
      span.attributes["palisade.model"] = model
      span.attributes["palisade.model.version"] = version
    }
    if let code {
      span.attributes["rpc.grpc.status_code"] = code
      span.setStatus(SpanStatus(code: .error, message: StatusMapping.codeName(raw: code)))
    }
    span.end(at: now)
    stageStart = now
  }
}
