import Foundation
import GRPCCore
public import Logging
import NIOCore
public import PalisadeCore
import PalisadeIdentity
public import PalisadeTransport
import ServiceLifecycle
public import PalisadeBundle

/// The assembled server: the gRPC listener with its interceptors and services, and the admin endpoint, run under
/// swift-service-lifecycle. SIGTERM or SIGINT starts a graceful shutdown: health turns NOT_SERVING, the listener
/// stops accepting, in-flight calls get `server.shutdown_grace_seconds` to finish, then the rest are cancelled.
public final class ServerRuntime: Sendable {
  public let config: ServerConfig
  public let repository: ModelRepository
  public let metrics: ServerMetrics
  public let state: ServingState
  /// The gRPC listener's bound address.
  public let grpcAddress = BoundAddress()
  /// The admin endpoint, when enabled.
  public let admin: AdminHTTPServer?
  private let grpcServer: GRPCServer<MTLSServerTransport>
  private let logger: Logger
  private let shutdownTrigger = ShutdownTrigger()
  /// Watches credential and policy files; `checkNow()` is what SIGHUP does.
  public let reloader: CredentialReloader

  /// Loads signed bundles, when `models.directories` is configured.
  public let bundles: BundleLoader?
  /// Writes the audit log (a no-op without an `audit` section).
  public let auditor: Auditor
  /// Receives the egress sidecar's block reports, when `egress.report_socket` is set.
  public let egressReports: EgressReportReceiver?
  private let pipeline: InferencePipeline
  /// Canary and shadow rollouts (`rollouts` in the config, `palisade rollout`).
  public let rollouts: RolloutController
  /// Exports finished spans (swift-otel's batch processor and OTLP exporter), when `tracing.enabled`.
  private let tracingService: (any Service)?

  /// Model versions holding per-version state in each cache (they follow the loaded versions; tests check that
  /// unloaded and replaced versions leave them).
  public var modelVersionStates: (scheduler: Int, screening: Int, statistics: Int) {
    (pipeline.scheduler.modelQueueCount, pipeline.screener.screenCount, pipeline.statistics.versionCount)
  }

  /// Builds the server. Throws errors that name the file or setting at fault. `runtimes` turn verified model
  /// files into servable models. Each subsystem is built by one small function in `RuntimeWiring.swift`, in
  /// dependency order.
  public init(
    config: ServerConfig, repository: ModelRepository? = nil, runtimes: [any ModelRuntime] = [], logger: Logger
  ) throws {
    self.config = config
    self.logger = logger
    let repository = repository ?? ModelRepository(required: Set(config.models.required))
    self.repository = repository
    let metrics = ServerMetrics()
    self.metrics = metrics
    let wiring = RuntimeWiring(config: config, repository: repository, metrics: metrics, logger: logger)

    let credentials = try wiring.credentials()
    let auditor = try wiring.auditor()
    self.auditor = auditor
    // Not ready while the audit log is failed: calls are refused then, so load balancers should look elsewhere.
    let state = ServingState(repository: repository, isAuditAvailable: { auditor.isAvailable })
    self.state = state
    self.egressReports = wiring.egressReports(auditor: auditor)
    self.reloader = wiring.reloader(credentials, auditor: auditor)
    let bundles = try wiring.bundleLoader(runtimes: runtimes, auditor: auditor)
    self.bundles = bundles
    let rollouts = wiring.rolloutController(bundles: bundles, auditor: auditor)
    self.rollouts = rollouts
    let authorizer = wiring.authorizer(credentials)
    let pipeline = wiring.pipeline(credentials, authorizer: authorizer, auditor: auditor, rollouts: rollouts)
    self.pipeline = pipeline
    wiring.reportModelsInMemory(runtimes)
    let tracing = try wiring.tracing()
    self.tracingService = tracing?.service
    let authenticator = wiring.authenticator(credentials, auditor: auditor)
    self.grpcServer = GRPCServer(
      transport: try wiring.transport(
        credentials, authenticator: authenticator, pipeline: pipeline, tracer: tracing?.tracer, bound: grpcAddress),
      services: try wiring.services(
        credentials, state: state, pipeline: pipeline, bundles: bundles, authorizer: authorizer, auditor: auditor,
        rollouts: rollouts),
      interceptors: wiring.interceptors(authenticator))
    self.admin = wiring.adminEndpoint(state: state)
  }

  /// Runs until SIGTERM/SIGINT or ``shutdown()``, then drains. Returns normally after a graceful shutdown.
  public func run(handleSignals: Bool = true) async throws {
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = []
    // First, so that it shuts down last (the group stops services in reverse order): the drained calls' spans
    // are exported before the process exits. Tracing never stops serving: if its exporter ends, calls go on.
    if let tracingService {
      services.append(
        .init(service: tracingService, successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore))
    }
    // The group stops services in reverse order, each after the one behind it has finished. So after the gRPC
    // server has drained, the audit log is closed (its final checkpoint written), and only then does the shipper
    // stop: it sends that final checkpoint while the sidecar is still up.
    if let proxy = config.egress.proxy, let url = config.egress.checkpointURL, auditor.isEnabled,
      let shipper = CheckpointShipper(auditor: auditor, proxy: proxy, url: url, logger: logger)
    {
      services.append(.init(service: shipper))
    }
    services += [
      .init(service: AuditCloser(auditor: auditor)),
      .init(service: GRPCServerService(server: grpcServer, state: state, logger: logger)),
      .init(service: shutdownTrigger, successTerminationBehavior: .gracefullyShutdownGroup),
      .init(service: reloader),
    ]
    if let admin { services.append(.init(service: admin)) }
    if let egressReports { services.append(.init(service: egressReports)) }
    if let integrity = bundles?.integrity, config.models.integrityCheckSeconds > 0 {
      services.append(.init(service: integrity))
    }
    var groupConfig = ServiceGroupConfiguration(
      services: services, gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [], logger: logger)
    groupConfig.maximumGracefulShutdownDuration = .seconds(config.server.shutdownGraceSeconds)
    groupConfig.maximumCancellationDuration = .seconds(5)
    let group = ServiceGroup(configuration: groupConfig)
    // Bundles load while the listener starts: /readyz and ServerReady say when they are in.
    let loadModels = Task { [bundles, rollouts] in
      // A model with a rollout planned in the config loads its stable version; the rollout loads the candidate.
      await bundles?.loadAll(
        below: Dictionary(
          config.rollouts.models.compactMap { p in Int(p.candidate).map { (p.model, $0) } },
          uniquingKeysWith: { a, _ in a }))
      await rollouts.startPlanned()
    }
    defer { loadModels.cancel() }
    let announce = Task { [grpcAddress, logger] in
      let address = await grpcAddress.get()
      logger.info(
        "palisade serving",
        metadata: [
          "listen": "\(config.server.listen.host):\(address.port ?? 0)", "version": "\(PalisadeVersion.current)",
        ])
    }
    defer { announce.cancel() }
    do {
      try await group.run()
    } catch  where state.isDraining {
      // The grace period ran out and the remaining calls were cancelled (the gRPC server then reports its
      // cancellation as an error): still the bounded, orderly exit SIGTERM asks for.
      logger.warning("shutdown grace period exceeded; remaining calls cancelled", metadata: ["error": "\(error)"])
    }
    // Normally done by `AuditCloser` already; here for a group that ended by an error or cancellation.
    await auditor.close()
    logger.info("palisade stopped")
  }

  /// The transport's limits from the `server` section; `exemptRPCs` (`auth.exempt_rpcs`) are the calls the
  /// unauthorized-call budget counts at their headers.
  public static func transportConfiguration(_ server: ServerConfig.Server, exemptRPCs: Set<String>)
    -> TransportConfiguration
  {
    let c = server.connection
    let l = server.limits
    let h = server.http2
    return TransportConfiguration(
      host: server.listen.host, port: server.listen.port,
      connections: .init(
        handshakeTimeout: .seconds(c.handshakeTimeoutSeconds), maxConnections: c.maxConnections,
        maxConnectionsPerAddress: c.maxConnectionsPerAddress, maxAge: .seconds(c.maxAgeSeconds),
        maxGrace: .seconds(c.maxAgeGraceSeconds), maxIdle: .seconds(c.maxIdleSeconds),
        keepaliveTime: .seconds(c.keepaliveSeconds), keepaliveTimeout: .seconds(c.keepaliveTimeoutSeconds)),
      streams: .init(maxConcurrentStreams: l.maxConcurrentStreams, maxHeaderListBytes: l.maxHeaderListBytes),
      messages: .init(
        maxMessageBytes: l.maxMessageBytes, maxInflightBytesPerConnection: l.maxInflightBytesPerConnection,
        maxInflightBytesPerPrincipal: l.maxInflightBytesPerPrincipal,
        messageTimeout: .seconds(l.messageTimeoutSeconds)),
      protections: .init(
        maxResetFrames: h.maxResetFrames, maxStreamErrors: h.maxStreamErrors, maxControlFrames: h.maxControlFrames,
        rateWindow: .seconds(h.rateWindowSeconds), maxSequentialContinuationFrames: h.maxSequentialContinuationFrames,
        maxBufferedControlFrames: h.maxBufferedControlFrames,
        maxSequentialEmptyDataFrames: h.maxSequentialEmptyDataFrames,
        maxRecentlyResetStreams: h.maxRecentlyResetStreams, maxConnectionGlitches: h.maxConnectionGlitches,
        maxOversizedHeaderBlocks: h.maxOversizedHeaderBlocks,
        maxOutboundBytesPerConnection: h.maxOutboundBytesPerConnection,
        writeStallTimeout: .seconds(h.writeStallTimeoutSeconds),
        unauthorizedCallsPerSecond: h.unauthorizedCallsPerSecond, unauthorizedCallBurst: h.unauthorizedCallBurst),
      tokenExemptMethods: exemptRPCs)
  }

  /// The bundle trust policy from the configuration's trust rules; errors name the key file.
  public static func trustPolicy(_ rules: [ServerConfig.Models.TrustRule]) throws -> TrustPolicy {
    try TrustPolicy.load(rules)
  }

  /// Starts a graceful shutdown, as SIGTERM does.
  public func shutdown() {
    shutdownTrigger.fire()
  }
}

/// Runs the gRPC server as a lifecycle service.
struct GRPCServerService: Service {
  let server: GRPCServer<MTLSServerTransport>
  let state: ServingState
  let logger: Logger

  func run() async throws {
    try await withGracefulShutdownHandler {
      try await server.serve()
    } onGracefulShutdown: {
      logger.info("graceful shutdown: no new calls, draining in-flight calls")
      state.beginDraining()
      server.beginGracefulShutdown()
    }
  }
}

/// Closes the audit log (last records, fsync, final signed checkpoint) at graceful shutdown, once the services
/// after it in the group, the gRPC server first, have stopped making records. Listed before them.
struct AuditCloser: Service {
  let auditor: Auditor

  func run() async throws {
    // Cancellation (the group failed) also ends the wait; `ServerRuntime.run` then closes the log itself.
    try? await gracefulShutdown()
    await auditor.close()
  }
}

/// A service whose only job is to end the group when asked, so that tests and embedders can stop the server
/// the same way a signal does.
final class ShutdownTrigger: Service, Sendable {
  private let stream: AsyncStream<Void>
  private let continuation: AsyncStream<Void>.Continuation

  init() {
    (stream, continuation) = AsyncStream.makeStream()
  }

  func fire() { continuation.yield() }

  func run() async throws {
    // Registered with `successTerminationBehavior: .gracefullyShutdownGroup`: returning shuts the group down.
    await withGracefulShutdownHandler {
      for await _ in stream { return }
    } onGracefulShutdown: {
      self.continuation.finish()
    }
  }
}
