import Foundation
import GRPCCore
public import Logging
import NIOCore
public import PalisadeCore
import PalisadeIdentity
import PalisadeAudit
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

  /// Model versions holding per-version state in each cache (they follow the loaded versions; tests check that
  /// unloaded and replaced versions leave them).
  public var modelVersionStates: (scheduler: Int, screening: Int, statistics: Int) {
    (pipeline.scheduler.modelQueueCount, pipeline.screener.screenCount, pipeline.statistics.versionCount)
  }

  /// Builds the server. Throws errors that name the file or setting at fault. `runtimes` turn verified model
  /// files into servable models.
  public init(
    config: ServerConfig, repository: ModelRepository? = nil, runtimes: [any ModelRuntime] = [], logger: Logger
  ) throws {
    self.config = config
    self.logger = logger
    let repository = repository ?? ModelRepository(required: Set(config.models.required))
    self.repository = repository
    self.metrics = ServerMetrics()

    let roots = try PEMFiles.certificates(at: config.server.tls.clientCABundle)
    let verifier = ClientCertificateVerifier(roots: roots)
    let certificates = try ServerCertificateStore(
      credentials: ServerCredentials(
        certificateChainPath: config.server.tls.certificateChain, privateKeyPath: config.server.tls.privateKey))
    let tokens = TokenVerifier(
      settings: TokenVerifier.Settings(
        audience: config.auth.audience, algorithms: Set(config.auth.algorithms), types: Set(config.auth.types),
        leewaySeconds: config.auth.leewaySeconds, maxLifetimeSeconds: config.auth.maxLifetimeSeconds),
      issuers: try CredentialFiles.issuers(config.auth))
    let policy = PolicyStore(try CredentialFiles.policy(config.policy.file))
    let exempt = Set(config.auth.exemptRPCs)
    let auditLog: AuditLog?
    var reopenAudit: (@Sendable (AuditDurableEnd?) throws -> AuditLog)?
    if let a = config.audit {
      var c = AuditConfiguration(directory: a.directory, keyFile: a.key)
      c.durability = a.durability == "batched" ? .batched : .sync
      c.segmentMaxBytes = UInt64(a.segmentMaxBytes)
      c.batchInterval = .milliseconds(a.batchIntervalMs)
      c.checkpointEveryRecords = a.checkpointEveryRecords
      c.checkpointInterval = .seconds(a.checkpointIntervalSeconds)
      c.origin = a.origin
      let opened = try AuditLog.open(configuration: c)
      auditLog = opened
      let r = opened.recovery
      if r.truncatedBytes > 0 || r.truncatedCheckpointBytes > 0 {
        // An interrupted append (a crash, kill -9, power loss) left a torn last record: it was cut off.
        logger.warning(
          "audit log recovered a torn tail",
          metadata: [
            "segment": "\(r.truncatedSegment ?? "-")", "bytes": "\(r.truncatedBytes)",
            "checkpoint_bytes": "\(r.truncatedCheckpointBytes)", "records": "\(r.recordCount)",
          ])
      }
      reopenAudit = { [c] end in try AuditLog.open(configuration: c, rollingBackTo: end) }
    } else {
      auditLog = nil
      logger.warning("no audit section in the config: decisions are not recorded in an audit log")
    }
    let auditor = Auditor(log: auditLog, metrics: metrics, logger: logger, reopen: reopenAudit)
    self.auditor = auditor
    // Not ready while the audit log is failed: calls are refused then, so load balancers should look elsewhere.
    self.state = ServingState(repository: repository, isAuditAvailable: { auditor.isAvailable })
    let metrics = self.metrics
    if let socket = config.egress.reportSocket {
      self.egressReports = EgressReportReceiver(
        path: socket, mode: config.egress.reportSocketMode, allowedSenderUIDs: config.egress.reportSenderUIDs.map(Set.init),
        auditor: auditor, metrics: metrics, logger: logger)
    } else {
      self.egressReports = nil
    }
    let quarantines = QuarantineStore()
    let authorizer = Authorizer(
      store: policy, metrics: metrics, logger: logger, exemptRPCs: exempt, quarantines: quarantines)
    self.reloader = CredentialReloader(
      config: config, certificates: certificates, verifier: verifier, tokens: tokens, policy: policy, metrics: metrics,
      logger: logger, auditor: auditor)


    if config.models.directories.isEmpty {
      self.bundles = nil
    } else {
      let unpack = config.models.unpackDirectory ?? FileManager.default.temporaryDirectory.path
      self.bundles = try BundleLoader(
        settings: .init(
          directories: config.models.directories, trust: try Self.trustPolicy(config.models.trust),
          stateFile: config.models.stateFile ?? "accepted-versions.json",
          unpackDirectory: unpack),
        runtimes: runtimes, repository: repository, logger: logger, auditor: auditor, metrics: metrics,
        integrity: IntegrityMonitor(
          interval: .seconds(max(1, config.models.integrityCheckSeconds)), repository: repository, metrics: metrics,
          auditor: auditor, logger: logger))
    }
    let statistics = ModelStatisticsStore()
    let pipeline = InferencePipeline(
      repository: repository, statistics: statistics, authorizer: authorizer,
      screener: InputScreener(
        settings: config.screening, policy: policy, quarantines: quarantines, metrics: metrics, logger: logger,
        auditor: auditor),
      scheduler: Scheduler(settings: config.scheduling, metrics: metrics), metrics: metrics, logger: logger,
      accessLog: config.logging.accessLog, auditor: auditor)
    self.pipeline = pipeline
    metrics.beforeRender { [weak metrics] in
      metrics?.setModelsInMemory(runtimes.compactMap(\.modelsInMemory).reduce(0, +))
    }
    let authenticator = CallAuthenticator(
      verifier: tokens, exemptRPCs: exempt, metrics: metrics, logger: logger, auditor: auditor)
    // ModelInfer and ModelStreamInfer are served on the transport's fast path; every other RPC goes through
    // grpc-swift, with the same authentication stages as interceptors.
    let transport = try MTLSServerTransport(
      configuration: Self.transportConfiguration(config.server), certificates: certificates, verifier: verifier,
      fastPaths: [InferenceFastPath(authenticator: authenticator, pipeline: pipeline, metrics: metrics, logger: logger)],
      fastStreams: [
        InferenceStreamFastPath(
          authenticator: authenticator, credentials: StreamCredentials(verifier: tokens), pipeline: pipeline,
          metrics: metrics, logger: logger)
      ],
      observer: metrics, bound: grpcAddress, logger: logger)
    // attestation.tpm: a TPM the config names must work, or the server does not start (docs/attestation.md).
    var tpm: TPMAttestor? = nil
    if let settings = config.attestation.tpm {
      do { tpm = try TPMAttestor(settings: settings) } catch {
        throw PalisadeError(.failedPrecondition, "attestation.tpm (\(settings.tcti)): \(error)")
      }
    }
    let attestation = AttestationService(
      builder: try config.attestation.key.map { path in EvidenceBuilder(key: try CredentialFiles.signingKey(path)) },
      tpm: tpm,
      sources: .init(
        config: config, policy: policy, repository: repository, leafCertificateDER: { certificates.leafDER },
        auditCheckpoint: { auditor.latestCheckpoint }),
      authorizer: authorizer, logger: logger, auditor: auditor)
    if tpm != nil {
      // Measured start; model versions are measured as they are retired and before every quote.
      attestation.reconcileTPM()
      repository.onRetire { _ in attestation.reconcileTPM() }
    }
    self.grpcServer = GRPCServer(
      transport: transport,
      services: [
        InferenceService(repository: repository, pipeline: pipeline, bundles: bundles, tokens: tokens, logger: logger),
        HealthService(state: state, maxWatchesPerConnection: config.server.limits.maxWatchesPerConnection),
        AdminService(authorizer: authorizer, metrics: metrics, logger: logger, auditor: auditor),
        attestation,
      ],
      interceptors: [
        CallObserverInterceptor(metrics: metrics, logger: logger),
        CallerIdentityInterceptor(authenticator: authenticator),
        TokenAuthenticationInterceptor(authenticator: authenticator),
      ])
    self.admin =
      config.admin.enabled
      ? AdminHTTPServer(
        host: config.admin.listen.host, port: config.admin.listen.port, state: state, metrics: metrics, logger: logger,
        maxConnections: config.admin.maxConnections, requestTimeout: .seconds(config.admin.requestTimeoutSeconds))
      : nil
  }

  /// Runs until SIGTERM/SIGINT or ``shutdown()``, then drains. Returns normally after a graceful shutdown.
  public func run(handleSignals: Bool = true) async throws {
    var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
      .init(service: GRPCServerService(server: grpcServer, state: state, logger: logger)),
      .init(service: shutdownTrigger, successTerminationBehavior: .gracefullyShutdownGroup),
      .init(service: reloader),
    ]
    if let admin { services.append(.init(service: admin)) }
    if let egressReports { services.append(.init(service: egressReports)) }
    if let proxy = config.egress.proxy, let url = config.egress.checkpointURL, auditor.isEnabled,
      let shipper = CheckpointShipper(auditor: auditor, proxy: proxy, url: url, logger: logger)
    {
      services.append(.init(service: shipper))
    }
    if let integrity = bundles?.integrity, config.models.integrityCheckSeconds > 0 {
      services.append(.init(service: integrity))
    }
    var groupConfig = ServiceGroupConfiguration(
      services: services, gracefulShutdownSignals: handleSignals ? [.sigterm, .sigint] : [], logger: logger)
    groupConfig.maximumGracefulShutdownDuration = .seconds(config.server.shutdownGraceSeconds)
    groupConfig.maximumCancellationDuration = .seconds(5)
    let group = ServiceGroup(configuration: groupConfig)
    // Bundles load while the listener starts: /readyz and ServerReady say when they are in.
    let loadModels = Task { [bundles] in await bundles?.loadAll() }
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
    } catch where state.isDraining {
      // The grace period ran out and the remaining calls were cancelled (the gRPC server then reports its
      // cancellation as an error): still the bounded, orderly exit SIGTERM asks for.
      logger.warning("shutdown grace period exceeded; remaining calls cancelled", metadata: ["error": "\(error)"])
    }
    await auditor.close()
    logger.info("palisade stopped")
  }

  /// The transport's limits from the `server` section.
  public static func transportConfiguration(_ server: ServerConfig.Server) -> TransportConfiguration {
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
        writeStallTimeout: .seconds(h.writeStallTimeoutSeconds)))
  }

  /// The bundle trust policy from the configuration's trust rules; errors name the key file.
  public static func trustPolicy(_ rules: [ServerConfig.Models.TrustRule]) throws -> TrustPolicy {
    try TrustPolicy(
      rules: rules.map { rule in
        var signers: [TrustedSigner] = []
        for path in rule.publicKeys {
          let pem: String
          do { pem = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw PEMFileError(path: path, reason: "cannot be read")
          }
          do { signers.append(try TrustedSigner.publicKey(pem: pem)) } catch {
            throw PEMFileError(path: path, reason: "\(error)")
          }
        }
        if !rule.certificateRoots.isEmpty {
          let san: SignerIdentityRequirement.SANPattern? = rule.signerSAN.map { s in
            if s.hasPrefix("dns:") { return .dns(String(s.dropFirst(4))) }
            if s.hasPrefix("uri:") { return .uri(String(s.dropFirst(4))) }
            return .email(String(s.drop { $0 != ":" }.dropFirst()))
          }
          let identity = try SignerIdentityRequirement(subjectCommonName: rule.signerSubject, san: san)
          var pems = ""
          for path in rule.certificateRoots {
            do { pems += try String(contentsOfFile: path, encoding: .utf8) + "\n" } catch {
              throw PEMFileError(path: path, reason: "cannot be read")
            }
          }
          do { signers.append(try TrustedSigner.certificate(rootsPEM: pems, identity: identity)) } catch {
            throw PEMFileError(path: rule.certificateRoots.joined(separator: ", "), reason: "\(error)")
          }
        }
        return TrustPolicy.Rule(modelPattern: rule.models, signers: signers)
      })
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
