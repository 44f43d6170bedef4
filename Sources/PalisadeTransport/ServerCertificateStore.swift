import NIOCore
import NIOSSL
import PalisadeIdentity
import Synchronization

/// The server's own certificate chain and key, replaceable at runtime: every new handshake reads the current
/// pair (through NIOSSL's per-ClientHello context callback), existing connections keep theirs until they age out.
public final class ServerCertificateStore: Sendable {
  private struct Pair: Sendable {
    var chain: [NIOSSLCertificate]
    var key: NIOSSLPrivateKey
    var override: NIOSSLContextConfigurationOverride
  }
  private let current: Mutex<Pair>

  /// Loads the pair from PEM files; errors name the file at fault.
  public init(credentials: ServerCredentials) throws {
    current = Mutex(try Self.pair(credentials))
  }

  /// Reads, checks and installs a new pair; on any error the old pair stays in force.
  public func reload(_ credentials: ServerCredentials) throws {
    let pair = try Self.pair(credentials)
    current.withLock { $0 = pair }
  }

  /// The leaf's notAfter as seconds since 1970, for the expiry metric.
  public var leafNotAfter: Int64? {
    current.withLock { $0.chain.first?.notValidAfter }.map { Int64($0) }
  }

  /// DER of the leaf certificate presented now (attestation binds evidence to its public key).
  public var leafDER: [UInt8]? {
    guard let leaf = current.withLock({ $0.chain.first }) else { return nil }
    return try? leaf.toDERBytes()
  }

  var override: NIOSSLContextConfigurationOverride { current.withLock { $0.override } }
  var chain: [NIOSSLCertificate] { current.withLock { $0.chain } }
  var key: NIOSSLPrivateKey { current.withLock { $0.key } }

  private static func pair(_ credentials: ServerCredentials) throws -> Pair {
    let (chain, key) = try load(credentials)
    var override = NIOSSLContextConfigurationOverride()
    override.certificateChain = chain.map { .certificate($0) }
    override.privateKey = .privateKey(key)
    return Pair(chain: chain, key: key, override: override)
  }

  static func load(_ credentials: ServerCredentials) throws -> ([NIOSSLCertificate], NIOSSLPrivateKey) {
    try PEMFiles.checkPrivateKeyPermissions(at: credentials.privateKeyPath)
    let chain: [NIOSSLCertificate]
    do { chain = try NIOSSLCertificate.fromPEMFile(credentials.certificateChainPath) } catch {
      throw PEMFileError(path: credentials.certificateChainPath, reason: "is not a PEM certificate chain")
    }
    guard let leaf = chain.first else {
      throw PEMFileError(path: credentials.certificateChainPath, reason: "holds no certificate")
    }
    let key: NIOSSLPrivateKey
    do { key = try NIOSSLPrivateKey(file: credentials.privateKeyPath, format: .pem) } catch {
      throw PEMFileError(path: credentials.privateKeyPath, reason: "is not a PEM private key")
    }
    // A key that does not match the certificate would fail every handshake: refuse it here instead.
    var probe = TLSConfiguration.makeServerConfiguration(
      certificateChain: [.certificate(leaf)], privateKey: .privateKey(key))
    probe.minimumTLSVersion = .tlsv13
    do { _ = try NIOSSLContext(configuration: probe) } catch {
      throw PEMFileError(
        path: credentials.privateKeyPath,
        reason: "does not match the certificate in \(credentials.certificateChainPath)")
    }
    return (chain, key)
  }
}
