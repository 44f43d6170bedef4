import Foundation

#if canImport(Glibc)
  import Glibc
#endif

/// A software TPM 2.0 (swtpm) for a test, started by certs/swtpm-start.sh with an endorsement key certificate from
/// a local "manufacturer" CA. Tests call `stop()` (with `defer`) so that no swtpm outlives them.
public struct SoftwareTPM: Sendable {
  public let tcti: String
  public let stateDir: String
  public let caDir: String

  /// The manufacturer's root certificate (what a verifier trusts) and the CA that issued the EK certificates.
  public var manufacturerRoot: String { "\(caDir)/swtpm-localca-rootca-cert.pem" }
  public var issuingCA: String { "\(caDir)/issuercert.pem" }
  /// Where swtpm_setup put the ECC P-384 endorsement key and its certificate.
  public static let eccEKHandle: UInt32 = 0x8101_0016
  public static let eccEKCertificateIndex: UInt32 = 0x01C0_0016

  static let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

  /// A manufacturer CA shared by the test run (its RSA keys take seconds to make), under the temporary directory.
  public static let sharedCADir: String = {
    let dir = NSTemporaryDirectory() + "palisade-swtpm-ca-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
  }()

  /// Manufactures and starts a TPM. `caDir` nil: the run's shared manufacturer.
  public static func start(caDir: String? = nil) throws -> SoftwareTPM {
    let state = NSTemporaryDirectory() + "palisade-swtpm-\(UUID().uuidString)"
    let ca = caDir ?? sharedCADir
    // system(3), not Process: the daemonised swtpm inherits the descriptors Process opens (a pipe never reaches
    // EOF) and Process's exit notification can stall under the test runner; the shell's wait is plain waitpid.
    try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
    let outPath = "\(state).out"
    let errPath = "\(state).err"
    defer {
      try? FileManager.default.removeItem(atPath: outPath)
      try? FileManager.default.removeItem(atPath: errPath)
    }
    let status = system(
      "'\(repositoryRoot)/certs/swtpm-start.sh' '\(state)' '\(ca)' </dev/null >'\(outPath)' 2>'\(errPath)'")
    let stdout = FileManager.default.contents(atPath: outPath) ?? Data()
    let stderr = FileManager.default.contents(atPath: errPath) ?? Data()
    let tcti = String(decoding: stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    guard status == 0, tcti.hasPrefix("swtpm:") else {
      throw SoftwareTPMError(message: "swtpm-start.sh failed: \(String(decoding: stderr, as: UTF8.self))")
    }
    return SoftwareTPM(tcti: tcti, stateDir: state, caDir: ca)
  }

  /// Stops swtpm and removes its state.
  public func stop() {
    if let text = try? String(contentsOfFile: "\(stateDir)/swtpm.pid", encoding: .utf8),
      let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1
    {
      kill(pid, SIGTERM)
    }
    try? FileManager.default.removeItem(atPath: stateDir)
  }
}

public struct SoftwareTPMError: Error, CustomStringConvertible {
  public var message: String
  public var description: String { message }
}
