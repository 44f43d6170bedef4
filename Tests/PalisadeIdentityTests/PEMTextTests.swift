import Crypto
import Foundation
import SwiftASN1
import Testing

@testable import PalisadeIdentity

/// PEM as GnuTLS `certtool` writes it: a description of the key before the block (RFC 7468 §2 says parsers ignore
/// text outside the encapsulation boundaries). Needs `certtool` (Debian `gnutls-bin`, installed by `make deps`).
@Suite("PEM with surrounding text")
struct PEMTextTests {
  /// Runs `certtool ARGS` in `dir`; returns stdout.
  static func certtool(_ args: [String], in dir: URL) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["certtool"] + args
    p.currentDirectoryURL = dir
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    #expect(
      p.terminationStatus == 0, "certtool \(args.joined(separator: " ")) failed (is gnutls-bin installed? `make deps`)")
    return String(decoding: data, as: UTF8.self)
  }

  static func tempDir() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("pem-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
  }

  @Test("a certtool P-256 private key with its description loads as a token signing key")
  func certtoolPrivateKey() throws {
    let dir = try Self.tempDir()
    defer { try? FileManager.default.removeItem(at: dir) }
    _ = try Self.certtool(["--generate-privkey", "--ecc", "--curve", "secp256r1", "--outfile", "k.pem"], in: dir)
    let text = try String(contentsOf: dir.appendingPathComponent("k.pem"), encoding: .utf8)
    #expect(!text.hasPrefix("-----BEGIN"), "certtool wrote no text before the block; the test proves nothing")
    let key = try TokenSigningKey(pem: text)
    #expect(key.algorithm == "ES256")
    // The same key as the bare block gives.
    guard let begin = text.range(of: "-----BEGIN") else {
      Issue.record("no PEM block in certtool output")
      return
    }
    let bare = try TokenSigningKey(pem: String(text[begin.lowerBound...]))
    #expect(key.jwk(kid: "k") == bare.jwk(kid: "k"))
  }

  @Test("a certtool public key with its description yields the bare block")
  func certtoolPublicKey() throws {
    let dir = try Self.tempDir()
    defer { try? FileManager.default.removeItem(at: dir) }
    _ = try Self.certtool(["--generate-privkey", "--ecc", "--curve", "secp384r1", "--outfile", "k.pem"], in: dir)
    let pub = try Self.certtool(["--load-privkey", "k.pem", "--pubkey-info"], in: dir)
    #expect(pub.hasPrefix("Public Key Info"))
    let block = PEMText.soleBlock(pub)
    #expect(block.hasPrefix("-----BEGIN PUBLIC KEY-----"))
    #expect(try P384.Signing.PublicKey(pemRepresentation: block).derRepresentation.count > 0)
  }

  @Test("text that is not exactly one block passes through unchanged (the key parser names the fault)")
  func malformedPassesThrough() throws {
    #expect(PEMText.soleBlock("no key here") == "no key here")
    let two = "-----BEGIN A-----\nAAAA\n-----END A-----\n-----BEGIN A-----\nAAAA\n-----END A-----\n"
    #expect(PEMText.soleBlock(two) == two)
    #expect(throws: (any Error).self) { _ = try TokenSigningKey(pem: "Private Key Info:\n\tnothing\n") }
  }

  @Test("a CA bundle written by `certtool -i` (a description before each certificate) is read")
  func certtoolCertificateInfo() throws {
    let dir = try Self.tempDir()
    defer { try? FileManager.default.removeItem(at: dir) }
    _ = try Self.certtool(["--generate-privkey", "--ecc", "--outfile", "ca.key"], in: dir)
    try "cn = \"certtool ca\"\nca\ncert_signing_key\nexpiration_days = 30\n".write(
      to: dir.appendingPathComponent("ca.tmpl"), atomically: true, encoding: .utf8)
    _ = try Self.certtool(
      ["--generate-self-signed", "--load-privkey", "ca.key", "--template", "ca.tmpl", "--outfile", "ca.pem"], in: dir)
    let described = try Self.certtool(["-i", "--infile", "ca.pem"], in: dir)
    #expect(!described.hasPrefix("-----BEGIN"))
    let bundle = dir.appendingPathComponent("bundle.pem")
    try described.write(to: bundle, atomically: true, encoding: .utf8)
    let roots = try PEMFiles.certificates(at: bundle.path)
    #expect(roots.count == 1)
  }

  @Test(
    "certtool PKCS#8 keys (leading zero in the scalar) load on every curve",
    arguments: ["secp256r1", "secp384r1", "secp521r1"])
  func certtoolPKCS8(curve: String) throws {
    let dir = try Self.tempDir()
    defer { try? FileManager.default.removeItem(at: dir) }
    _ = try Self.certtool(
      ["--generate-privkey", "--ecc", "--curve", curve, "--pkcs8", "--password", "", "--outfile", "k.pem"], in: dir)
    let text = try String(contentsOf: dir.appendingPathComponent("k.pem"), encoding: .utf8)
    #expect(text.contains("-----BEGIN PRIVATE KEY-----"))
    #expect(try PEMText.ecPrivateKey(text) != nil)
  }

  @Test("an EC key whose carried public key is not its own is refused")
  func mismatchedPublicKeyRefused() throws {
    // SEC1 of key A with key B's public point spliced in: the scalar and the point disagree.
    let a = P256.Signing.PrivateKey()
    let b = P256.Signing.PrivateKey()
    var der = Array(a.derRepresentation)
    let pointA = Array(a.publicKey.x963Representation)
    let pointB = Array(b.publicKey.x963Representation)
    guard
      let at = (0...(der.count - pointA.count)).first(where: { der[$0..<($0 + pointA.count)].elementsEqual(pointA) })
    else {
      Issue.record("public point not found in SEC1 DER")
      return
    }
    der.replaceSubrange(at..<(at + pointA.count), with: pointB)
    let pem = PEMDocument(type: "EC PRIVATE KEY", derBytes: der).pemString
    #expect(throws: PEMText.KeyError.self) { _ = try PEMText.ecPrivateKey(pem) }
    #expect(throws: (any Error).self) { _ = try TokenSigningKey(pem: pem) }
  }
}
