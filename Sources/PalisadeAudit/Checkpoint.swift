public import Crypto
public import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// A checkpoint of the log in the C2SP signed-note format (https://c2sp.org/tlog-checkpoint,
/// https://c2sp.org/signed-note):
///
///     <origin>\n
///     <tree size, decimal>\n
///     <root hash, standard base64>\n
///     time <RFC 3339 UTC, microseconds>\n       (an extension line)
///     \n
///     — <key name> <base64(key hash (4 bytes) || Ed25519 signature (64 bytes))>\n
///
/// The signature covers the note text (the four lines above the blank line). The key hash is the first four
/// bytes of SHA-256(key name || "\n" || 0x01 || public key), as signed-note defines for Ed25519.
public struct SignedCheckpoint: Sendable, Equatable {
  /// The log's origin line (its name).
  public var origin: String
  /// Number of records the checkpoint covers.
  public var treeSize: UInt64
  /// MTH of the first `treeSize` records.
  public var rootHash: [UInt8]
  /// When it was made, microseconds since the epoch.
  public var timeMicros: Int64
  /// The whole signed note, byte for byte as written.
  public var note: String

  /// The note text that the signature covers.
  static func body(origin: String, treeSize: UInt64, rootHash: [UInt8], timeMicros: Int64) -> String {
    "\(origin)\n\(treeSize)\n\(Data(rootHash).base64EncodedString())\ntime \(RFC3339Micros.format(timeMicros))\n"
  }

  /// Signs a new checkpoint.
  public static func sign(
    origin: String, treeSize: UInt64, rootHash: [UInt8], time: Date = Date(), key: AuditSigningKey
  ) throws -> SignedCheckpoint {
    let micros = Int64((time.timeIntervalSince1970 * 1_000_000).rounded(.down))
    let text = body(origin: origin, treeSize: treeSize, rootHash: rootHash, timeMicros: micros)
    let signature = try key.privateKey.signature(for: Array(text.utf8))
    let blob = key.keyHash + Array(signature)
    let note = text + "\n" + "\u{2014} \(key.name) \(Data(blob).base64EncodedString())\n"
    return SignedCheckpoint(origin: origin, treeSize: treeSize, rootHash: rootHash, timeMicros: micros, note: note)
  }

  /// Parses a note and verifies its signature with `key`: the key's name and hash must appear on a signature
  /// line, and that signature must verify over the text. Other signature lines (cosigners) are ignored.
  public static func verify(note: String, key: AuditVerifyingKey, expectedOrigin: String? = nil) throws
    -> SignedCheckpoint
  {
    guard let split = note.range(of: "\n\n") else {
      throw AuditError.checkpoint("no blank line between text and signatures")
    }
    let text = String(note[..<split.lowerBound]) + "\n"
    let sigBlock = note[split.upperBound...]
    guard sigBlock.hasSuffix("\n") else { throw AuditError.checkpoint("signature block does not end in a newline") }
    var verified = false
    for line in sigBlock.split(separator: "\n", omittingEmptySubsequences: false).dropLast() {
      guard line.hasPrefix("\u{2014} ") else { throw AuditError.checkpoint("malformed signature line") }
      let parts = line.dropFirst(2).split(separator: " ", omittingEmptySubsequences: false)
      guard parts.count == 2, let blob = Data(base64Encoded: String(parts[1])), blob.count >= 5 else {
        throw AuditError.checkpoint("malformed signature line")
      }
      guard String(parts[0]) == key.name, Array(blob.prefix(4)) == key.keyHash else { continue }
      guard blob.count == 68, key.publicKey.isValidSignature(blob.dropFirst(4), for: Array(text.utf8)) else {
        throw AuditError.checkpoint("signature by \(key.name) does not verify")
      }
      verified = true
    }
    guard verified else { throw AuditError.checkpoint("no signature by key \(key.name)+\(key.keyHashHex)") }
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
    guard lines.count >= 3 else { throw AuditError.checkpoint("note text has fewer than three lines") }
    let origin = String(lines[lines.startIndex])
    let sizeText = String(lines[lines.startIndex + 1])
    guard let size = UInt64(sizeText), String(size) == sizeText else {
      throw AuditError.checkpoint("tree size \(sizeText) is not a decimal number")
    }
    guard let root = Data(base64Encoded: String(lines[lines.startIndex + 2])), root.count == 32 else {
      throw AuditError.checkpoint("root hash is not base64 of 32 bytes")
    }
    if let expectedOrigin, origin != expectedOrigin {
      throw AuditError.checkpoint("origin \(origin) is not the expected \(expectedOrigin)")
    }
    var micros: Int64 = 0
    for ext in lines.dropFirst(3) where ext.hasPrefix("time ") {
      guard let t = RFC3339Micros.parse(String(ext.dropFirst(5))) else {
        throw AuditError.checkpoint("malformed time line")
      }
      micros = t
    }
    return SignedCheckpoint(origin: origin, treeSize: size, rootHash: Array(root), timeMicros: micros, note: note)
  }

  /// `time` as a `Date`.
  public var time: Date { Date(timeIntervalSince1970: Double(timeMicros) / 1_000_000) }
}

/// Fixed DER prefixes of Ed25519 keys (RFC 8410): PKCS#8 private keys and SubjectPublicKeyInfo public keys,
/// the forms `openssl genpkey -algorithm ed25519` reads and writes.
enum Ed25519DER {
  static let pkcs8Prefix: [UInt8] = [
    0x30, 0x2E, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
  ]
  static let spkiPrefix: [UInt8] = [0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00]

  static func pem(_ label: String, _ der: [UInt8]) -> String {
    let b64 = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
    return "-----BEGIN \(label)-----\n\(b64)\n-----END \(label)-----\n"
  }

  static func der(fromPEM text: String, label: String) -> [UInt8]? {
    guard let begin = text.range(of: "-----BEGIN \(label)-----"),
      let end = text.range(of: "-----END \(label)-----", range: begin.upperBound..<text.endIndex)
    else { return nil }
    let body = text[begin.upperBound..<end.lowerBound].filter { !$0.isWhitespace }
    return Data(base64Encoded: String(body)).map(Array.init)
  }
}

/// Checks a key name the signed-note rules allow: non-empty, no whitespace, no `+`.
func validKeyName(_ name: String) -> Bool {
  !name.isEmpty && !name.contains(where: { $0.isWhitespace || $0 == "+" })
}

func noteKeyHash(name: String, publicKey: [UInt8]) -> [UInt8] {
  Array(SHA256.hash(data: Array(name.utf8) + [0x0A, 0x01] + publicKey).prefix(4))
}

/// The audit signing key: an Ed25519 private key and the note key name it signs under.
public struct AuditSigningKey: Sendable {
  public let name: String
  let privateKey: Curve25519.Signing.PrivateKey
  let keyHash: [UInt8]

  public init(name: String, privateKey: Curve25519.Signing.PrivateKey) throws {
    guard validKeyName(name) else {
      throw AuditError.configuration("key name \"\(name)\" must be non-empty with no spaces or '+'")
    }
    self.name = name
    self.privateKey = privateKey
    self.keyHash = noteKeyHash(name: name, publicKey: Array(privateKey.publicKey.rawRepresentation))
  }

  /// A fresh key.
  public static func generate(name: String) throws -> AuditSigningKey {
    try AuditSigningKey(name: name, privateKey: Curve25519.Signing.PrivateKey())
  }

  /// Reads a PKCS#8 PEM Ed25519 private key ("PRIVATE KEY") that only its owner can read (mode 0600 or
  /// stricter).
  ///
  /// One exception, as for the TLS and attestation keys: group read (no write) when the file's group is this
  /// process's own group and its owner is root or this process's user, which is how Kubernetes mounts a Secret for a
  /// pod's `fsGroup` (0440, root:fsGroup; a root-owned 0400 file could not be read at all).
  public static func load(path: String, name: String) throws -> AuditSigningKey {
    var info = stat()
    guard stat(path, &info) == 0 else { throw AuditError.key(path: path, reason: "cannot be read") }
    guard (info.st_mode & S_IFMT) == S_IFREG else { throw AuditError.key(path: path, reason: "is not a regular file") }
    let mode = Int(info.st_mode & 0o777)
    let ownGroupReadOnly =
      mode & 0o077 == 0o040 && info.st_gid == getegid() && (info.st_uid == 0 || info.st_uid == geteuid())
    guard mode & 0o077 == 0 || ownGroupReadOnly else {
      throw AuditError.key(
        path: path, reason: "is accessible by group or others (mode \(String(mode, radix: 8))); run chmod 600 on it")
    }
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
      throw AuditError.key(path: path, reason: "cannot be read")
    }
    guard let der = Ed25519DER.der(fromPEM: text, label: "PRIVATE KEY"), der.count == 48,
      Array(der.prefix(16)) == Ed25519DER.pkcs8Prefix,
      let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: der.suffix(32))
    else { throw AuditError.key(path: path, reason: "is not a PKCS#8 PEM Ed25519 private key") }
    return try AuditSigningKey(name: name, privateKey: key)
  }

  /// PKCS#8 PEM of the private key.
  public var privateKeyPEM: String {
    Ed25519DER.pem("PRIVATE KEY", Ed25519DER.pkcs8Prefix + Array(privateKey.rawRepresentation))
  }

  /// The matching verifying key.
  public var verifyingKey: AuditVerifyingKey {
    // The name was validated in init, so this cannot fail.
    AuditVerifyingKey(checkedName: name, publicKey: privateKey.publicKey)
  }
}

/// The public half: verifies checkpoints. Read from an Ed25519 SubjectPublicKeyInfo PEM (with a key name) or
/// from a signed-note verifier key string `<name>+<hash hex>+<base64(0x01 || key)>`.
public struct AuditVerifyingKey: Sendable {
  public let name: String
  let publicKey: Curve25519.Signing.PublicKey
  let keyHash: [UInt8]

  init(checkedName: String, publicKey: Curve25519.Signing.PublicKey) {
    self.name = checkedName
    self.publicKey = publicKey
    self.keyHash = noteKeyHash(name: checkedName, publicKey: Array(publicKey.rawRepresentation))
  }

  /// From a PEM public key.
  public init(pem: String, name: String) throws {
    guard validKeyName(name) else {
      throw AuditError.configuration("key name \"\(name)\" must be non-empty with no spaces or '+'")
    }
    guard let der = Ed25519DER.der(fromPEM: pem, label: "PUBLIC KEY"), der.count == 44,
      Array(der.prefix(12)) == Ed25519DER.spkiPrefix,
      let key = try? Curve25519.Signing.PublicKey(rawRepresentation: der.suffix(32))
    else { throw AuditError.key(path: "(PEM)", reason: "is not an Ed25519 public key (SubjectPublicKeyInfo PEM)") }
    self.init(checkedName: name, publicKey: key)
  }

  /// From a signed-note verifier key string.
  public init(verifierKey: String) throws {
    let parts = verifierKey.trimmingCharacters(in: .whitespacesAndNewlines).split(
      separator: "+", maxSplits: 2, omittingEmptySubsequences: false)
    guard parts.count == 3, validKeyName(String(parts[0])), parts[1].count == 8, let hash = UInt32(parts[1], radix: 16),
      let raw = Data(base64Encoded: String(parts[2])), raw.count == 33, raw.first == 0x01,
      let key = try? Curve25519.Signing.PublicKey(rawRepresentation: raw.dropFirst())
    else { throw AuditError.key(path: "(verifier key)", reason: "is not an Ed25519 signed-note verifier key") }
    self.init(checkedName: String(parts[0]), publicKey: key)
    var expected: [UInt8] = []
    Frame.appendBE(hash, to: &expected)
    guard expected == keyHash else {
      throw AuditError.key(path: "(verifier key)", reason: "key hash does not match the key")
    }
  }

  /// Reads a key file: a PEM public key (named `name`) or a verifier key string.
  public static func load(path: String, name: String) throws -> AuditVerifyingKey {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
      throw AuditError.key(path: path, reason: "cannot be read")
    }
    do {
      if text.contains("-----BEGIN") { return try AuditVerifyingKey(pem: text, name: name) }
      return try AuditVerifyingKey(verifierKey: text)
    } catch AuditError.key(_, let reason) {
      throw AuditError.key(path: path, reason: reason)
    }
  }

  /// The PEM SubjectPublicKeyInfo.
  public var publicKeyPEM: String {
    Ed25519DER.pem("PUBLIC KEY", Ed25519DER.spkiPrefix + Array(publicKey.rawRepresentation))
  }

  var keyHashHex: String { keyHash.map { String(format: "%02x", $0) }.joined() }

  /// The signed-note verifier key string (for Go's `note.NewVerifier` and similar tools).
  public var verifierKey: String {
    "\(name)+\(keyHashHex)+\(Data([0x01] + Array(publicKey.rawRepresentation)).base64EncodedString())"
  }
}
