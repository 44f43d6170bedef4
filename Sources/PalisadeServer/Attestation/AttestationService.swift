import Crypto
import Foundation
public import GRPCCore
import Logging
public import PalisadeCore
import PalisadeIdentity
import PalisadeSupport
public import PalisadeProto
import PalisadeTPM
import PalisadeTransport
import Synchronization
import X509

/// `palisade.v1.Attestation`: signed evidence of what this server runs, for the caller's nonce, bound to the TLS
/// certificate the caller sees. Authorised like any other RPC (`Attest` in the policy; covered by `*`).
public final class AttestationService: Palisade_V1_Attestation.SimpleServiceProtocol {
  /// Everything the service reads at request time.
  public struct Sources: Sendable {
    public var config: ServerConfig
    public var policy: PolicyStore
    public var repository: ModelRepository
    public var leafCertificateDER: @Sendable () -> [UInt8]?
    public var auditCheckpoint: @Sendable () -> String?
  }

  let builder: EvidenceBuilder?
  /// The TPM rooting the evidence (attestation.tpm), when configured.
  let tpm: TPMAttestor?
  let sources: Sources
  let authorizer: Authorizer
  let logger: Logger
  let auditor: Auditor
  /// TPM commands block for milliseconds to hundreds of them (a discrete chip): they run one at a time on this
  /// queue, never on the event loops that serve every other call.
  private let tpmQueue = DispatchQueue(label: "palisade.attestation.tpm")
  /// Attest calls holding or waiting for the TPM; beyond ``maxPendingTPM`` they are refused with
  /// RESOURCE_EXHAUSTED rather than queued without bound.
  private let tpmPending = Atomic<Int>(0)
  static let maxPendingTPM = 4
  private let executableDigest = Mutex<String?>(nil)
  /// Hashed once, like the executable: the SBOM ships with the build and does not change while it runs.
  private let sbomDigest = Mutex<String??>(nil)

  init(
    builder: EvidenceBuilder?, tpm: TPMAttestor? = nil, sources: Sources, authorizer: Authorizer, logger: Logger,
    auditor: Auditor
  ) {
    self.tpm = tpm
    self.auditor = auditor
    self.builder = builder
    self.sources = sources
    self.authorizer = authorizer
    self.logger = logger
  }

  public func attest(request: Palisade_V1_AttestRequest, context: ServerContext) async throws
    -> Palisade_V1_AttestResponse
  {
    let call = try context.callContext()
    try await authorizer.authorize(call, rpc: context.descriptor.method, model: nil, auditor: auditor)
    guard let builder else {
      throw PalisadeError(.failedPrecondition, "attestation is not configured on this server (attestation.key)")
    }
    guard (16...64).contains(request.nonce.count) else {
      throw PalisadeError(.invalidArgument, "nonce must be 16 to 64 bytes, got \(request.nonce.count)")
    }
    guard let der = sources.leafCertificateDER(), let leaf = try? Certificate(derEncoded: der) else {
      throw PalisadeError(.internal, "attestation failed", detail: "no server certificate")
    }
    var m = measurements(tls: leaf.publicKeySHA256)
    var tpmPart: Palisade_V1_TPMEvidence? = nil
    if let tpm { tpmPart = try await tpmEvidence(tpm, request: request, measurements: &m) }
    let evidence: String
    do {
      evidence = try builder.evidence(nonce: Array(request.nonce), measurements: m)
    } catch {
      throw PalisadeError(.internal, "attestation failed", detail: "\(error)")
    }
    logger.info(
      "attestation evidence issued",
      metadata: ["principal": "\(call.identity.spiffeID)", "request_id": "\(call.requestID)"])
    await auditor.event(
      .attestation, principal: call.identity.spiffeID.description, status: "OK", details: ["key_id": builder.keyID])
    return .with {
      $0.evidence = evidence
      $0.keyID = builder.keyID
      if let tpmPart { $0.tpm = tpmPart }
    }
  }

  /// Brings the TPM's measurements up to date with `m`, activates the caller's credential challenge when there is
  /// one, and quotes for the request nonce; `m` then carries the quote's digest, binding the claims to it. Runs on
  /// the TPM's own queue.
  func tpmEvidence(
    _ tpm: TPMAttestor, request: Palisade_V1_AttestRequest, measurements m: inout EvidenceBuilder.Measurements
  ) async throws(PalisadeError) -> Palisade_V1_TPMEvidence {
    guard tpmPending.add(1, ordering: .relaxed).newValue <= Self.maxPendingTPM else {
      tpmPending.subtract(1, ordering: .relaxed)
      throw PalisadeError(.resourceExhausted, "the TPM is busy with other attestations; retry shortly")
    }
    defer { tpmPending.subtract(1, ordering: .relaxed) }
    let state = m.tpmState
    let logger = self.logger
    let result = await withCheckedContinuation {
      (done: CheckedContinuation<Result<(Palisade_V1_TPMEvidence, String), PalisadeError>, Never>) in
      tpmQueue.async {
        done.resume(
          returning: Result { () throws(PalisadeError) in
            try Self.tpmEvidence(tpm, state: state, request: request, logger: logger)
          })
      }
    }
    let (evidence, quoteDigest) = try result.get()
    m.tpmQuoteSHA256 = quoteDigest
    return evidence
  }

  private static func tpmEvidence(
    _ tpm: TPMAttestor, state: [String: String], request: Palisade_V1_AttestRequest, logger: Logger
  ) throws(PalisadeError) -> (Palisade_V1_TPMEvidence, String) {
    var activated: [UInt8] = []
    do {
      try tpm.reconcile(state)
      if !request.credentialBlob.isEmpty || !request.encryptedSecret.isEmpty {
        do {
          activated = try tpm.activate(
            credentialBlob: Array(request.credentialBlob), encryptedSecret: Array(request.encryptedSecret))
        } catch {
          throw PalisadeError(.invalidArgument, "credential activation failed", detail: "\(error)")
        }
      }
      let parts = try tpm.evidence(nonce: Array(request.nonce))
      let quoteDigest = hexString(SHA256.hash(data: parts.quote.attest))
      let evidence = Palisade_V1_TPMEvidence.with {
        $0.quoteAttest = Data(parts.quote.attest)
        $0.quoteSignature = Data(parts.quote.signature)
        $0.akPublic = Data(parts.akPublic)
        $0.ekPublic = Data(parts.ekPublic)
        $0.ekCertificate = Data(parts.ekCertificate)
        $0.eventLog = parts.eventLog
        $0.pcr = UInt32(clamping: parts.pcr)
        for (index, value) in parts.pcrValues { $0.pcrValues[UInt32(clamping: index)] = Data(value) }
        $0.activatedCredential = Data(activated)
      }
      return (evidence, quoteDigest)
    } catch let error as PalisadeError {
      throw error
    } catch {
      logger.error("TPM attestation failed", metadata: ["error": "\(error)"])
      throw PalisadeError(.unavailable, "the TPM is not available", detail: "\(error)")
    }
  }

  /// Brings the TPM's measurements up to date (at start and when model versions are retired), on the TPM's queue
  /// (a retirement may come from a caller's thread); errors are logged, the next Attest retries.
  func reconcileTPM() {
    guard let tpm else { return }
    let state = measurements(tls: "").tpmState
    let logger = self.logger
    tpmQueue.async {
      do { try tpm.reconcile(state) } catch {
        logger.error("TPM measurement failed", metadata: ["error": "\(error)"])
      }
    }
  }

  func measurements(tls: String) -> EvidenceBuilder.Measurements {
    let executable = executableDigest.withLock { cached in
      if let cached { return cached }
      let digest = EvidenceBuilder.fileSHA256("/proc/self/exe") ?? ""
      cached = digest
      return digest
    }
    let c = sources.config
    let sbom = sbomDigest.withLock { cached in
      if let cached { return cached }
      let digest = Self.sbomPath(configured: c.attestation.sbom).flatMap(EvidenceBuilder.fileSHA256)
      cached = .some(digest)
      return digest
    }
    var jwks: [String: String] = [:]
    for issuer in c.auth.issuers { jwks[issuer.issuer] = EvidenceBuilder.fileSHA256(issuer.jwks) ?? "" }
    let trust = c.models.trust.flatMap { $0.publicKeys + $0.certificateRoots }.map {
      EvidenceBuilder.fileSHA256($0) ?? ""
    }
    let ready = sources.repository.index().filter { $0.state == .ready }
    let models = ready.compactMap { try? sources.repository.resolve(name: $0.name, version: $0.version).descriptor }
    return .init(
      executableSHA256: executable, configSHA256: c.sourceDigest, policySHA256: sources.policy.policy.digest,
      clientCABundleSHA256: EvidenceBuilder.fileSHA256(c.server.tls.clientCABundle), jwksSHA256: jwks,
      trustSHA256: trust,
      tlsSPKISHA256: tls, auditCheckpoint: sources.auditCheckpoint(), models: models, sbomSHA256: sbom)
  }

  /// The configured SBOM, else `../share/palisade/sbom.cdx.json` from the executable's directory when it exists.
  static func sbomPath(configured: String?) -> String? {
    if let configured { return configured }
    guard let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
    let path = URL(fileURLWithPath: exe).deletingLastPathComponent().deletingLastPathComponent()
      .appendingPathComponent("share/palisade/sbom.cdx.json").path
    return FileManager.default.fileExists(atPath: path) ? path : nil
  }
}
