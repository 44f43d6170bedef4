import Foundation
import GRPCCore
import Logging
import PalisadeAudit
import PalisadeCore
import PalisadeIdentity
import PalisadeTransport
import ServiceLifecycle

/// Builds `ServerRuntime`'s subsystems, one small function each, from the configuration and the parts every
/// subsystem shares. A new subsystem gets its own function here and one line in `ServerRuntime.init`.
struct RuntimeWiring {
  let config: ServerConfig
  let repository: ModelRepository
  let metrics: ServerMetrics
  let logger: Logger

  /// The files the server trusts and is trusted by, each loaded once here and reloaded by `CredentialReloader`.
  struct Credentials {
    /// Client certificates, against `server.tls.client_ca_bundle`.
    let verifier: ClientCertificateVerifier
    /// This server's certificate chain and key.
    let certificates: ServerCertificateStore
    /// Tokens, against the issuers' JWKS files.
    let tokens: TokenVerifier
    let policy: PolicyStore
    /// RPCs that need no token.
    let exemptRPCs: Set<String>
    /// Callers the extraction monitor or an operator quarantined; shared by authorisation and screening.
    let quarantines = QuarantineStore()
  }

  func credentials() throws -> Credentials {
    let tls = config.server.tls
    let auth = config.auth
    return Credentials(
      verifier: ClientCertificateVerifier(roots: try PEMFiles.certificates(at: tls.clientCABundle)),
      certificates: try ServerCertificateStore(
        credentials: ServerCredentials(certificateChainPath: tls.certificateChain, privateKeyPath: tls.privateKey)),
      tokens: TokenVerifier(
        settings: TokenVerifier.Settings(
          audience: auth.audience, algorithms: Set(auth.algorithms), types: Set(auth.types),
          leewaySeconds: auth.leewaySeconds, maxLifetimeSeconds: auth.maxLifetimeSeconds),
        issuers: try CredentialFiles.issuers(auth)),
      policy: PolicyStore(try CredentialFiles.policy(config.policy.file)),
      exemptRPCs: Set(auth.exemptRPCs))
  }

  /// Pipeline stage 10: the auditor, over the audit log when there is an `audit` section.
  func auditor() throws -> Auditor {
    guard let a = config.audit else {
      logger.warning("no audit section in the config: decisions are not recorded in an audit log")
      return Auditor(log: nil, metrics: metrics, logger: logger, reopen: nil)
    }
    var c = AuditConfiguration(directory: a.directory, keyFile: a.key)
    c.durability = a.durability == "batched" ? .batched : .sync
    c.segmentMaxBytes = UInt64(a.segmentMaxBytes)
    c.batchInterval = .milliseconds(a.batchIntervalMs)
    c.checkpointEveryRecords = a.checkpointEveryRecords
    c.checkpointInterval = .seconds(a.checkpointIntervalSeconds)
    c.origin = a.origin
    let opened = try AuditLog.open(configuration: c)
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
    return Auditor(
      log: opened, metrics: metrics, logger: logger,
      reopen: { [c] end in try AuditLog.open(configuration: c, rollingBackTo: end) })
  }

  /// The egress sidecar's block reports, when `egress.report_socket` is set.
  func egressReports(auditor: Auditor) -> EgressReportReceiver? {
    guard let socket = config.egress.reportSocket else { return nil }
    return EgressReportReceiver(
      path: socket, mode: config.egress.reportSocketMode,
      allowedSenderUIDs: config.egress.reportSenderUIDs.map(Set.init), auditor: auditor, metrics: metrics,
      logger: logger)
  }

  func reloader(_ credentials: Credentials, auditor: Auditor) -> CredentialReloader {
    CredentialReloader(
      config: config, certificates: credentials.certificates, verifier: credentials.verifier,
      tokens: credentials.tokens, policy: credentials.policy, metrics: metrics, logger: logger, auditor: auditor)
  }

  /// Signed bundles and their integrity monitor, when `models.directories` is configured.
  func bundleLoader(runtimes: [any ModelRuntime], auditor: Auditor) throws -> BundleLoader? {
    let models = config.models
    guard !models.directories.isEmpty else { return nil }
    return try BundleLoader(
      settings: .init(
        directories: models.directories, trust: try ServerRuntime.trustPolicy(models.trust),
        stateFile: models.stateFile ?? "accepted-versions.json",
        unpackDirectory: models.unpackDirectory ?? FileManager.default.temporaryDirectory.path),
      runtimes: runtimes, repository: repository, logger: logger, auditor: auditor, metrics: metrics,
      integrity: IntegrityMonitor(
        interval: .seconds(max(1, models.integrityCheckSeconds)), repository: repository, metrics: metrics,
        auditor: auditor, logger: logger))
  }

  /// Canary and shadow rollouts (`rollouts`, `palisade rollout`).
  func rolloutController(bundles: BundleLoader?, auditor: Auditor) -> RolloutController {
    RolloutController(
      repository: repository, bundles: bundles, settings: config.rollouts, metrics: metrics, auditor: auditor,
      logger: logger)
  }

  /// OpenTelemetry spans and their export service, when `tracing.enabled`.
  func tracing() throws -> (tracer: CallTracer, service: any Service)? {
    try CallTracer.make(config.tracing, logger: logger, environment: ProcessInfo.processInfo.environment)
  }

  /// Pipeline stage 3.
  func authorizer(_ credentials: Credentials) -> Authorizer {
    Authorizer(
      store: credentials.policy, metrics: metrics, logger: logger, exemptRPCs: credentials.exemptRPCs,
      quarantines: credentials.quarantines)
  }

  /// Pipeline stages 3 to 10 for inference calls.
  func pipeline(
    _ credentials: Credentials, authorizer: Authorizer, auditor: Auditor, rollouts: RolloutController
  ) -> InferencePipeline {
    InferencePipeline(
      repository: repository, statistics: ModelStatisticsStore(), authorizer: authorizer,
      screener: InputScreener(
        settings: config.screening, policy: credentials.policy, quarantines: credentials.quarantines,
        metrics: metrics, logger: logger, auditor: auditor),
      scheduler: Scheduler(settings: config.scheduling, metrics: metrics), metrics: metrics, logger: logger,
      accessLog: config.logging.accessLog, auditor: auditor, rollouts: rollouts)
  }

  /// `palisade_models_in_memory`, summed over the runtimes at each scrape.
  func reportModelsInMemory(_ runtimes: [any ModelRuntime]) {
    metrics.beforeRender { [weak metrics = self.metrics] in
      metrics?.setModelsInMemory(runtimes.compactMap(\.modelsInMemory).reduce(0, +))
    }
  }

  /// Pipeline stage 2.
  func authenticator(_ credentials: Credentials, auditor: Auditor) -> CallAuthenticator {
    CallAuthenticator(
      verifier: credentials.tokens, exemptRPCs: credentials.exemptRPCs, metrics: metrics, logger: logger,
      auditor: auditor)
  }

  /// Pipeline stage 1: the mTLS listener. ModelInfer and ModelStreamInfer are served on the transport's fast path;
  /// every other RPC goes through grpc-swift, with the same authentication stages as interceptors.
  func transport(
    _ credentials: Credentials, authenticator: CallAuthenticator, pipeline: InferencePipeline, tracer: CallTracer?,
    bound: BoundAddress
  ) throws -> MTLSServerTransport {
    try MTLSServerTransport(
      configuration: ServerRuntime.transportConfiguration(config.server, exemptRPCs: credentials.exemptRPCs),
      certificates: credentials.certificates,
      verifier: credentials.verifier,
      fastPaths: [
        InferenceFastPath(
          authenticator: authenticator, pipeline: pipeline, metrics: metrics, logger: logger, tracer: tracer)
      ],
      fastStreams: [
        InferenceStreamFastPath(
          authenticator: authenticator, credentials: StreamCredentials(verifier: credentials.tokens),
          pipeline: pipeline, metrics: metrics, logger: logger, tracer: tracer)
      ],
      observer: metrics, bound: bound, logger: logger)
  }

  /// The gRPC services other than the fast path.
  func services(
    _ credentials: Credentials, state: ServingState, pipeline: InferencePipeline, bundles: BundleLoader?,
    authorizer: Authorizer, auditor: Auditor, rollouts: RolloutController
  ) throws -> [any RegistrableRPCService] {
    return [
      InferenceService(
        repository: repository, pipeline: pipeline, bundles: bundles, tokens: credentials.tokens, logger: logger),
      HealthService(state: state, maxWatchesPerConnection: config.server.limits.maxWatchesPerConnection),
      AdminService(authorizer: authorizer, metrics: metrics, logger: logger, auditor: auditor, rollouts: rollouts),
      try attestation(credentials, authorizer: authorizer, auditor: auditor),
    ]
  }

  /// The Attestation RPC: evidence signed with the configured key and, with `attestation.tpm`, quoted by the TPM
  /// (which must work, or the server does not start: docs/attestation.md).
  func attestation(_ credentials: Credentials, authorizer: Authorizer, auditor: Auditor) throws -> AttestationService {
    var tpm: TPMAttestor? = nil
    if let settings = config.attestation.tpm {
      do { tpm = try TPMAttestor(settings: settings) } catch {
        throw PalisadeError(.failedPrecondition, "attestation.tpm (\(settings.tcti)): \(error)")
      }
    }
    let certificates = credentials.certificates
    let attestation = AttestationService(
      builder: try config.attestation.key.map { path in EvidenceBuilder(key: try CredentialFiles.signingKey(path)) },
      tpm: tpm,
      sources: .init(
        config: config, policy: credentials.policy, repository: repository,
        leafCertificateDER: { certificates.leafDER }, auditCheckpoint: { auditor.latestCheckpoint }),
      authorizer: authorizer, logger: logger, auditor: auditor)
    if tpm != nil {
      // Measured start; model versions are measured as they are retired and before every quote.
      attestation.reconcileTPM()
      repository.onRetire { _ in attestation.reconcileTPM() }
    }
    return attestation
  }

  /// Outermost first: metrics and error normalisation, then the caller's identity, then the token.
  func interceptors(_ authenticator: CallAuthenticator) -> [any ServerInterceptor] {
    [
      CallObserverInterceptor(metrics: metrics, logger: logger),
      CallerIdentityInterceptor(authenticator: authenticator),
      TokenAuthenticationInterceptor(authenticator: authenticator),
    ]
  }

  /// The admin HTTP endpoint, when enabled.
  func adminEndpoint(state: ServingState) -> AdminHTTPServer? {
    let admin = config.admin
    guard admin.enabled else { return nil }
    return AdminHTTPServer(
      host: admin.listen.host, port: admin.listen.port, state: state, metrics: metrics, logger: logger,
      maxConnections: admin.maxConnections, maxConnectionsPerAddress: admin.maxConnectionsPerAddress,
      requestTimeout: .seconds(admin.requestTimeoutSeconds),
      metricsRendersPerSecond: admin.maxMetricsRendersPerSecond)
  }
}
