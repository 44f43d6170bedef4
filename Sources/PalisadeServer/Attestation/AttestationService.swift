import Foundation
public import GRPCCore
import Logging
public import PalisadeCore
import PalisadeIdentity
public import PalisadeProto
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
  let sources: Sources
  let authorizer: Authorizer
  let logger: Logger
  let auditor: Auditor
  private let executableDigest = Mutex<String?>(nil)
  /// Hashed once, like the executable: the SBOM ships with the build and does not change while it runs.
  private let sbomDigest = Mutex<String??>(nil)

  init(builder: EvidenceBuilder?, sources: Sources, authorizer: Authorizer, logger: Logger, auditor: Auditor) {
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
    let evidence: String
    do {
      evidence = try builder.evidence(nonce: Array(request.nonce), measurements: measurements(tls: leaf.publicKeySHA256))
    } catch {
      throw PalisadeError(.internal, "attestation failed", detail: "\(error)")
    }
    logger.info("attestation evidence issued", metadata: ["principal": "\(call.identity.spiffeID)", "request_id": "\(call.requestID)"])
    await auditor.event(.attestation, principal: call.identity.spiffeID.description, status: "OK", details: ["key_id": builder.keyID])
    return .with {
      $0.evidence = evidence
      $0.keyID = builder.keyID
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
    let trust = c.models.trust.flatMap { $0.publicKeys + $0.certificateRoots }.map { EvidenceBuilder.fileSHA256($0) ?? "" }
    let ready = sources.repository.index().filter { $0.state == .ready }
    let models = ready.compactMap { try? sources.repository.resolve(name: $0.name, version: $0.version).descriptor }
    return .init(
      executableSHA256: executable, configSHA256: c.sourceDigest, policySHA256: sources.policy.policy.digest,
      clientCABundleSHA256: EvidenceBuilder.fileSHA256(c.server.tls.clientCABundle), jwksSHA256: jwks, trustSHA256: trust,
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
