import Crypto
import Foundation
import Testing

@testable import PalisadeBundle

/// Key loading and the OMS key hint, checked against OpenSSL's own output.
@Suite("Keys")
struct KeyFormatTests {
  static func openssl(_ args: [String], input: String) throws -> String {
    try runTool(["openssl"] + args, input: input)
  }

  @Test("hint = sha256 of `openssl ec -pubout`; SEC1 and PKCS#8 keys load", arguments: Curve.allCases)
  func hintAndSEC1(curve: Curve) throws {
    let key = TestKey(curve)
    let opensslPub = try Self.openssl(["ec", "-pubout"], input: key.privatePEM)
    #expect(key.publicKey.canonicalPEM == opensslPub)
    #expect(key.publicKey.omsHint == Hex.encode(SHA256.hash(data: Array(opensslPub.utf8))))
    let sec1 = try Self.openssl(["ec"], input: key.privatePEM)
    #expect(sec1.contains("BEGIN EC PRIVATE KEY"))
    let loaded = try BundleSigningKey(pem: sec1)
    #expect(loaded.publicKey == key.publicKey)
    #expect(try BundlePublicKey(pem: opensslPub) == key.publicKey)
  }

  @Test("unsupported keys are refused with a reason")
  func unsupported() {
    let ed = Curve25519.Signing.PrivateKey()
    let pem =
      "-----BEGIN PRIVATE KEY-----\n"
      + Data(
        [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]
          + ed.rawRepresentation
      ).base64EncodedString() + "\n-----END PRIVATE KEY-----\n"
    #expect(throws: BundleError.self) { _ = try BundleSigningKey(pem: pem) }
    #expect(throws: BundleError.self) { _ = try BundlePublicKey(pem: "not a key") }
  }
}

/// Keys as GnuTLS `certtool` writes them: a description before the PEM block (RFC 7468 §2: ignored by parsers).
/// Needs `certtool` (Debian `gnutls-bin`, installed by `make deps`).
@Suite("Keys written by certtool")
struct CerttoolKeyTests {
  static func certtool(_ args: [String], in temp: TempDir) throws -> String {
    try runTool(["certtool"] + args, directory: temp.path, hint: " (is gnutls-bin installed? `make deps`)")
  }

  @Test("a certtool P-384 publisher key pair signs and verifies a bundle")
  func certtoolP384() async throws {
    let temp = try TempDir()
    _ = try Self.certtool(
      ["--generate-privkey", "--ecc", "--curve", "secp384r1", "--outfile", "publisher.key"], in: temp)
    let publicText = try Self.certtool(["--load-privkey", "publisher.key", "--pubkey-info"], in: temp)
    let privateText = try String(contentsOfFile: temp.sub("publisher.key"), encoding: .utf8)
    #expect(!privateText.hasPrefix("-----BEGIN") && !publicText.hasPrefix("-----BEGIN"), "no text before the blocks")
    let signing = try BundleSigningKey(pem: privateText)
    let publicKey = try BundlePublicKey(pem: publicText)
    #expect(publicKey == signing.publicKey)
    #expect(publicKey.curveName == "P-384")
    let dir = try makeBundleDirectory(in: temp)
    try await BundleSigner.sign(directory: dir, key: signing)
    let trust = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [try .publicKey(pem: publicText)])])
    let verified = try await BundleVerifier.verify(directory: dir, trust: trust, modelName: "digits")
    #expect(verified.files.count == 5)
  }
}

/// Runs a command-line tool from PATH (with `input` on stdin, in `directory`); returns its stdout and records a
/// failed exit as a test issue.
func runTool(_ argv: [String], input: String? = nil, directory: String? = nil, hint: String = "") throws -> String {
  let p = Process()
  p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
  p.arguments = argv
  if let directory { p.currentDirectoryURL = URL(fileURLWithPath: directory) }
  let stdin = Pipe()
  let stdout = Pipe()
  p.standardInput = stdin
  p.standardOutput = stdout
  p.standardError = FileHandle.nullDevice
  try p.run()
  if let input { stdin.fileHandleForWriting.write(Data(input.utf8)) }
  try stdin.fileHandleForWriting.close()
  let out = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
  p.waitUntilExit()
  #expect(p.terminationStatus == 0, "\(argv.joined(separator: " ")) failed\(hint)")
  return out
}
