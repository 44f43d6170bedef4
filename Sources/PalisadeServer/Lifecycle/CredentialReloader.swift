import Crypto
import Dispatch
import Foundation
import Logging
import PalisadeIdentity
import PalisadePolicy
import PalisadeTransport
import PalisadeYAML
public import ServiceLifecycle

/// Loading of every file-based credential, shared by start-up and reload so that both apply the same checks.
enum CredentialFiles {
  static func issuers(_ auth: ServerConfig.Auth) throws -> [TokenVerifier.Issuer] {
    try auth.issuers.map { issuer in
      let data: Data
      do { data = try Data(contentsOf: URL(fileURLWithPath: issuer.jwks)) } catch {
        throw PEMFileError(path: issuer.jwks, reason: "cannot be read")
      }
      let keys: JWKS
      do { keys = try JWKS.parse(data) } catch {
        throw PEMFileError(path: issuer.jwks, reason: "is not usable: \(error)")
      }
      return TokenVerifier.Issuer(
        issuer: issuer.issuer, kind: issuer.kind == .spiffe ? .spiffe : .oauth, keys: keys,
        trustDomain: issuer.trustDomain, requireCertificateBinding: issuer.requireCertificateBinding)
    }
  }

  static func policy(_ path: String) throws -> Policy {
    try Policy.load(path: path)
  }

  /// A private signing key (attestation): permissions checked like the TLS key, then parsed.
  static func signingKey(_ path: String) throws -> TokenSigningKey {
    try PEMFiles.checkPrivateKeyPermissions(at: path)
    let pem: String
    do { pem = try String(contentsOfFile: path, encoding: .utf8) } catch {
      throw PEMFileError(path: path, reason: "cannot be read")
    }
    do { return try TokenSigningKey(pem: pem) } catch {
      throw PEMFileError(path: path, reason: "is not a PEM P-256, P-384 or Ed25519 private key")
    }
  }
}

/// Watches the server certificate and key, the client-CA bundle, the JWKS files and the policy, and installs a
/// changed file when it loads cleanly. Checks run every `reload.interval_seconds` and at once on SIGHUP; a change
/// is detected by content (so the atomic symlink swaps of Kubernetes volumes and spiffe-helper count). A bad file
/// is refused with an error log and a failure metric, and the old credential stays in force.
public final class CredentialReloader: Service, Sendable {
  struct Watched: Sendable {
    let kind: String
    let files: [String]
    let apply: @Sendable () throws -> Void
  }

  private let watched: [Watched]
  private let interval: Duration
  private let metrics: ServerMetrics
  private let logger: Logger
  private let certificates: ServerCertificateStore
  private let fingerprints: FingerprintTable
  private let auditor: Auditor?
  private let trigger = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))

  init(
    config: ServerConfig, certificates: ServerCertificateStore, verifier: ClientCertificateVerifier,
    tokens: TokenVerifier, policy: PolicyStore, metrics: ServerMetrics, logger: Logger, auditor: Auditor? = nil
  ) {
    self.auditor = auditor
    let tls = config.server.tls
    let auth = config.auth
    let policyFile = config.policy.file
    watched = [
      Watched(kind: "server_certificate", files: [tls.certificateChain, tls.privateKey]) {
        try certificates.reload(
          ServerCredentials(certificateChainPath: tls.certificateChain, privateKeyPath: tls.privateKey))
      },
      Watched(kind: "client_ca", files: [tls.clientCABundle]) {
        verifier.replaceRoots(try PEMFiles.certificates(at: tls.clientCABundle))
      },
      Watched(kind: "jwks", files: auth.issuers.map(\.jwks)) {
        tokens.replaceIssuers(try CredentialFiles.issuers(auth))
      },
      Watched(kind: "policy", files: [policyFile]) {
        policy.replace(try CredentialFiles.policy(policyFile))
      },
    ]
    self.interval = .seconds(config.reload.intervalSeconds)
    self.metrics = metrics
    self.logger = logger
    self.certificates = certificates
    self.fingerprints = FingerprintTable()
    for w in watched { fingerprints.set(w.kind, Self.fingerprint(w.files)) }
    updateExpiry()
  }

  /// Checks every file now (what SIGHUP does).
  public func checkNow() { trigger.continuation.yield() }

  public func run() async throws {
    let signals = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
    signal(SIGHUP, SIG_IGN)
    signals.setEventHandler { [trigger] in trigger.continuation.yield() }
    signals.resume()
    defer { signals.cancel() }
    let ticker = Task { [trigger, interval] in
      while !Task.isCancelled {
        try? await Task.sleep(for: interval)
        trigger.continuation.yield()
      }
    }
    defer { ticker.cancel() }
    await cancelWhenGracefulShutdown { [self] in
      for await _ in trigger.stream {
        if Task.isCancelled { return }
        await checkAll()
      }
    }
  }

  /// One pass over every watched credential.
  func checkAll() async {
    for w in watched {
      let now = Self.fingerprint(w.files)
      guard now != fingerprints.get(w.kind) else { continue }
      do {
        try w.apply()
        metrics.recordReload(kind: w.kind, success: true)
        logger.notice("credential reloaded", metadata: ["kind": "\(w.kind)"])
        await auditor?.event(
          w.kind == "policy" ? .policyReload : .credentialReload, status: "OK", details: ["kind": w.kind])
      } catch {
        metrics.recordReload(kind: w.kind, success: false)
        logger.error(
          "credential reload refused; the previous one stays in force",
          metadata: ["kind": "\(w.kind)", "error": "\(error)"])
        await auditor?.event(
          w.kind == "policy" ? .policyReload : .credentialReload, status: "FAILED_PRECONDITION", reason: "\(error)",
          details: ["kind": w.kind])
      }
      // Remember the content either way: a bad file is reported once, not every interval.
      fingerprints.set(w.kind, now)
    }
    updateExpiry()
  }

  private func updateExpiry() {
    if let notAfter = certificates.leafNotAfter {
      metrics.setServerCertificateExpiry(seconds: Double(notAfter) - Date().timeIntervalSince1970)
    }
  }

  /// SHA-256 over the files' contents (missing files hash as absent), following symlinks.
  static func fingerprint(_ files: [String]) -> [UInt8] {
    var hasher = SHA256()
    for file in files {
      hasher.update(data: Array(file.utf8))
      if let data = FileManager.default.contents(atPath: file) {
        hasher.update(data: [1])
        hasher.update(data: data)
      } else {
        hasher.update(data: [0])
      }
    }
    return Array(hasher.finalize())
  }
}

/// The last content fingerprint seen per kind.
final class FingerprintTable: Sendable {
  private let table = Synchronization.Mutex<[String: [UInt8]]>([:])
  func get(_ kind: String) -> [UInt8]? { table.withLock { $0[kind] } }
  func set(_ kind: String, _ value: [UInt8]) { table.withLock { $0[kind] = value } }
}

import Synchronization
