import Crypto
import Foundation
import Testing

@testable import PalisadeBundle

/// Key loading and the OMS key hint, checked against OpenSSL's own output.
@Suite("Keys")
struct KeyFormatTests {
  static func openssl(_ args: [String], input: String) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["openssl"] + args
    let stdin = Pipe()
    let stdout = Pipe()
    p.standardInput = stdin
    p.standardOutput = stdout
    p.standardError = FileHandle.nullDevice
    try p.run()
    stdin.fileHandleForWriting.write(Data(input.utf8))
    try stdin.fileHandleForWriting.close()
    let out = String(decoding: stdout.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    #expect(p.terminationStatus == 0, "openssl \(args.joined(separator: " ")) failed")
    return out
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
    let pem = "-----BEGIN PRIVATE KEY-----\n" + Data([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20] + ed.rawRepresentation).base64EncodedString() + "\n-----END PRIVATE KEY-----\n"
    #expect(throws: BundleError.self) { _ = try BundleSigningKey(pem: pem) }
    #expect(throws: BundleError.self) { _ = try BundlePublicKey(pem: "not a key") }
  }
}
