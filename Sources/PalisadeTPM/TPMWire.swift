public import Crypto
import _CryptoExtras
import Foundation

// TPM 2.0 wire structures (TPM 2.0 Part 2), in pure Swift: what a caller parses and checks, without a TSS. The
// server side talks to its TPM through ESAPI (TPMDevice); these are the bytes that cross the network.

/// Algorithm and constant values from TPM 2.0 Part 2.
public enum TPMConst {
  public static let algECC: UInt16 = 0x0023
  public static let algSHA256: UInt16 = 0x000B
  public static let algSHA384: UInt16 = 0x000C
  public static let algECDSA: UInt16 = 0x0018
  public static let algECDAA: UInt16 = 0x001A
  public static let algNull: UInt16 = 0x0010
  public static let algAES: UInt16 = 0x0006
  public static let algCFB: UInt16 = 0x0043
  public static let curveP256: UInt16 = 0x0003
  public static let curveP384: UInt16 = 0x0004
  /// TPM2_GENERATED_VALUE: the magic that starts every structure the TPM signs itself.
  public static let generatedValue: UInt32 = 0xff54_4347
  public static let stAttestQuote: UInt16 = 0x8018
}

/// TPMA_OBJECT bits.
public struct TPMObjectAttributes: OptionSet, Sendable {
  public let rawValue: UInt32
  public init(rawValue: UInt32) { self.rawValue = rawValue }
  public static let fixedTPM = TPMObjectAttributes(rawValue: 0x0000_0002)
  public static let fixedParent = TPMObjectAttributes(rawValue: 0x0000_0010)
  public static let sensitiveDataOrigin = TPMObjectAttributes(rawValue: 0x0000_0020)
  public static let userWithAuth = TPMObjectAttributes(rawValue: 0x0000_0040)
  public static let adminWithPolicy = TPMObjectAttributes(rawValue: 0x0000_0080)
  public static let noDA = TPMObjectAttributes(rawValue: 0x0000_0400)
  public static let restricted = TPMObjectAttributes(rawValue: 0x0001_0000)
  public static let decrypt = TPMObjectAttributes(rawValue: 0x0002_0000)
  public static let sign = TPMObjectAttributes(rawValue: 0x0004_0000)
}

/// Big-endian reader over TPM-marshalled bytes; every read is bounds-checked.
public struct TPMReader {
  let bytes: [UInt8]
  public private(set) var offset = 0
  public init(_ bytes: [UInt8]) { self.bytes = bytes }
  public var atEnd: Bool { offset == bytes.count }

  public mutating func take(_ n: Int, _ what: String) throws(TPMError) -> [UInt8] {
    guard n >= 0, n <= bytes.count - offset else { throw .malformed("\(what) runs past the end") }
    defer { offset += n }
    return Array(bytes[offset..<(offset + n)])
  }
  public mutating func u8(_ what: String) throws(TPMError) -> UInt8 { try take(1, what)[0] }
  public mutating func u16(_ what: String) throws(TPMError) -> UInt16 {
    let b = try take(2, what)
    return UInt16(b[0]) << 8 | UInt16(b[1])
  }
  public mutating func u32(_ what: String) throws(TPMError) -> UInt32 {
    let b = try take(4, what)
    return b.reduce(0) { $0 << 8 | UInt32($1) }
  }
  public mutating func u64(_ what: String) throws(TPMError) -> UInt64 {
    let b = try take(8, what)
    return b.reduce(0) { $0 << 8 | UInt64($1) }
  }
  /// A TPM2B: a 16-bit size, then that many bytes.
  public mutating func sized(_ what: String) throws(TPMError) -> [UInt8] {
    try take(Int(try u16(what)), what)
  }
}

/// Big-endian writer for TPM structures.
public struct TPMWriter {
  public private(set) var bytes: [UInt8] = []
  public init() {}
  public mutating func u8(_ v: UInt8) { bytes.append(v) }
  public mutating func u16(_ v: UInt16) { bytes += [UInt8(v >> 8), UInt8(v & 0xff)] }
  public mutating func u32(_ v: UInt32) { bytes += (0..<4).map { UInt8((v >> (24 - 8 * $0)) & 0xff) } }
  public mutating func raw(_ b: [UInt8]) { bytes += b }
  /// TPM2B; the caller keeps `b` under 64 KiB (every TPM2B here is a digest, a key coordinate or a small blob).
  public mutating func sized(_ b: [UInt8]) {
    u16(UInt16(clamping: b.count))
    bytes += b.prefix(Int(UInt16.max))
  }
}

/// A TPMT_PUBLIC of an ECC key: the attestation key and the endorsement key as they cross the wire.
public struct TPMECCPublic: Sendable, Equatable {
  public var nameAlg: UInt16
  public var attributes: TPMObjectAttributes
  public var authPolicy: [UInt8]
  /// The symmetric algorithm of a storage/EK key (AES, key bits, mode), nil for TPM_ALG_NULL.
  public var symmetric: (alg: UInt16, keyBits: UInt16, mode: UInt16)?
  public var scheme: UInt16
  public var schemeHash: UInt16
  public var curve: UInt16
  public var x: [UInt8]
  public var y: [UInt8]
  /// The marshalled TPMT_PUBLIC this was parsed from (what the name is computed over).
  public var marshalled: [UInt8]

  public static func == (a: TPMECCPublic, b: TPMECCPublic) -> Bool { a.marshalled == b.marshalled }

  public init(marshalled bytes: [UInt8]) throws(TPMError) {
    var r = TPMReader(bytes)
    guard try r.u16("type") == TPMConst.algECC else { throw .unsupported("only ECC keys are handled") }
    nameAlg = try r.u16("nameAlg")
    attributes = TPMObjectAttributes(rawValue: try r.u32("objectAttributes"))
    authPolicy = try r.sized("authPolicy")
    let symAlg = try r.u16("symmetric.algorithm")
    if symAlg == TPMConst.algNull {
      symmetric = nil
    } else {
      let keyBits = try r.u16("symmetric.keyBits")
      let mode = try r.u16("symmetric.mode")
      symmetric = (symAlg, keyBits, mode)
    }
    scheme = try r.u16("scheme")
    schemeHash = 0
    if scheme == TPMConst.algECDAA { throw .unsupported("ECDAA keys") }
    if scheme != TPMConst.algNull { schemeHash = try r.u16("scheme.hashAlg") }
    curve = try r.u16("curveID")
    if try r.u16("kdf.scheme") != TPMConst.algNull { _ = try r.u16("kdf.hashAlg") }
    x = try r.sized("unique.x")
    y = try r.sized("unique.y")
    guard r.atEnd else { throw .malformed("bytes after TPMT_PUBLIC") }
    marshalled = bytes
  }

  /// The TPM name: nameAlg, then the nameAlg digest of the marshalled TPMT_PUBLIC.
  public var name: [UInt8] {
    get throws(TPMError) {
      var w = TPMWriter()
      w.u16(nameAlg)
      w.raw(try TPMHash.digest(nameAlg, marshalled))
      return w.bytes
    }
  }

  /// The template of Palisade's attestation key: a restricted ECC P-256 signing key (ECDSA/SHA-256) that never
  /// leaves the TPM (fixedTPM, fixedParent, sensitiveDataOrigin). As a primary key of the endorsement hierarchy it
  /// is the same key on every start of the same TPM.
  public static let attestationKeyTemplate: [UInt8] = {
    var w = TPMWriter()
    w.u16(TPMConst.algECC)
    w.u16(TPMConst.algSHA256)
    let attrs: TPMObjectAttributes = [
      .fixedTPM, .fixedParent, .sensitiveDataOrigin, .userWithAuth, .noDA, .restricted, .sign,
    ]
    w.u32(attrs.rawValue)
    w.sized([])  // no policy
    w.u16(TPMConst.algNull)  // no symmetric: a signing key
    w.u16(TPMConst.algECDSA)
    w.u16(TPMConst.algSHA256)
    w.u16(TPMConst.curveP256)
    w.u16(TPMConst.algNull)  // kdf
    w.sized([])
    w.sized([])
    return w.bytes
  }()

  /// Whether this is an attestation key a caller can trust to sign only what the TPM itself produced: restricted,
  /// signing, created in and unable to leave its TPM, ECDSA P-256 with SHA-256.
  public var isRestrictedP256SigningKey: Bool {
    attributes.isSuperset(of: [.fixedTPM, .fixedParent, .sensitiveDataOrigin, .restricted, .sign])
      && !attributes.contains(.decrypt) && curve == TPMConst.curveP256 && scheme == TPMConst.algECDSA
      && schemeHash == TPMConst.algSHA256 && nameAlg == TPMConst.algSHA256
  }

  /// The P-256 public key (for the attestation key).
  public func p256SigningKey() throws(TPMError) -> P256.Signing.PublicKey {
    guard curve == TPMConst.curveP256 else { throw .unsupported("curve 0x\(String(curve, radix: 16))") }
    do { return try P256.Signing.PublicKey(rawRepresentation: Self.pad(x, 32) + Self.pad(y, 32)) } catch {
      throw .malformed("the ECC point is not on P-256")
    }
  }

  /// Left-pads (or trims to the last `n` bytes) a big-endian coordinate.
  public static func pad(_ b: [UInt8], _ n: Int) -> [UInt8] {
    b.count >= n ? Array(b.suffix(n)) : [UInt8](repeating: 0, count: n - b.count) + b
  }
}

/// A TPMS_ATTEST of type quote (TPM2_Quote's `quoted`).
public struct TPMQuoteInfo: Sendable {
  public var qualifiedSigner: [UInt8]
  public var extraData: [UInt8]
  public var clock: UInt64
  public var resetCount: UInt32
  public var restartCount: UInt32
  public var safe: Bool
  public var firmwareVersion: UInt64
  /// (hash algorithm, selected PCR indices in ascending order).
  public var selections: [(hash: UInt16, pcrs: [Int])]
  public var pcrDigest: [UInt8]

  public init(marshalled bytes: [UInt8]) throws(TPMError) {
    var r = TPMReader(bytes)
    guard try r.u32("magic") == TPMConst.generatedValue else {
      throw .malformed("magic is not TPM_GENERATED_VALUE (not produced by a TPM)")
    }
    guard try r.u16("type") == TPMConst.stAttestQuote else { throw .malformed("attestation is not a quote") }
    qualifiedSigner = try r.sized("qualifiedSigner")
    extraData = try r.sized("extraData")
    clock = try r.u64("clock")
    resetCount = try r.u32("resetCount")
    restartCount = try r.u32("restartCount")
    safe = try r.u8("safe") != 0
    firmwareVersion = try r.u64("firmwareVersion")
    let count = try r.u32("pcrSelect.count")
    guard count <= 16 else { throw .malformed("too many PCR selections") }
    selections = []
    for _ in 0..<count {
      let hash = try r.u16("pcrSelect.hash")
      let size = Int(try r.u8("pcrSelect.sizeofSelect"))
      let bitmap = try r.take(size, "pcrSelect.pcrSelect")
      var pcrs: [Int] = []
      for (i, byte) in bitmap.enumerated() {
        for bit in 0..<8 where byte & (1 << bit) != 0 { pcrs.append(i * 8 + bit) }
      }
      selections.append((hash, pcrs))
    }
    pcrDigest = try r.sized("pcrDigest")
    guard r.atEnd else { throw .malformed("bytes after TPMS_ATTEST") }
  }

  /// The marshalled TPML_PCR_SELECTION for `pcrs` of one bank (3 bytes of bitmap: PCRs 0–23).
  public static func selection(hash: UInt16, pcrs: [Int]) throws(TPMError) -> [UInt8] {
    var bitmap = [UInt8](repeating: 0, count: 3)
    for p in pcrs {
      guard (0..<24).contains(p) else { throw .invalidArgument("PCR \(p) is not 0–23") }
      bitmap[p / 8] |= UInt8(1 << (p % 8))
    }
    var w = TPMWriter()
    w.u32(1)
    w.u16(hash)
    w.u8(3)
    w.raw(bitmap)
    return w.bytes
  }
}

/// A TPMT_SIGNATURE with ECDSA.
public struct TPMECDSASignature: Sendable {
  public var hash: UInt16
  public var r: [UInt8]
  public var s: [UInt8]
  public init(marshalled bytes: [UInt8]) throws(TPMError) {
    var rd = TPMReader(bytes)
    guard try rd.u16("sigAlg") == TPMConst.algECDSA else { throw .unsupported("signature is not ECDSA") }
    hash = try rd.u16("hash")
    r = try rd.sized("signatureR")
    s = try rd.sized("signatureS")
    guard rd.atEnd else { throw .malformed("bytes after TPMT_SIGNATURE") }
  }

  /// Whether this signs `message` (SHA-256 of it) under `key`.
  public func verifies(_ message: [UInt8], key: P256.Signing.PublicKey) -> Bool {
    guard hash == TPMConst.algSHA256, r.count <= 32, s.count <= 32,
      let sig = try? P256.Signing.ECDSASignature(rawRepresentation: TPMECCPublic.pad(r, 32) + TPMECCPublic.pad(s, 32))
    else { return false }
    return key.isValidSignature(sig, for: message)
  }
}

/// The digests and KDFs of TPM 2.0 Part 1 §11.4.10, for the two name algorithms endorsement keys use.
public enum TPMHash {
  public static func size(_ alg: UInt16) throws(TPMError) -> Int {
    switch alg {
    case TPMConst.algSHA256: 32
    case TPMConst.algSHA384: 48
    default: throw TPMError.unsupported("hash algorithm 0x\(String(alg, radix: 16))")
    }
  }
  public static func digest(_ alg: UInt16, _ data: [UInt8]) throws(TPMError) -> [UInt8] {
    switch alg {
    case TPMConst.algSHA256: Array(SHA256.hash(data: data))
    case TPMConst.algSHA384: Array(SHA384.hash(data: data))
    default: throw TPMError.unsupported("hash algorithm 0x\(String(alg, radix: 16))")
    }
  }
  public static func hmac(_ alg: UInt16, key: [UInt8], _ data: [UInt8]) throws(TPMError) -> [UInt8] {
    let k = SymmetricKey(data: key)
    switch alg {
    case TPMConst.algSHA256: return Array(HMAC<SHA256>.authenticationCode(for: data, using: k))
    case TPMConst.algSHA384: return Array(HMAC<SHA384>.authenticationCode(for: data, using: k))
    default: throw TPMError.unsupported("hash algorithm 0x\(String(alg, radix: 16))")
    }
  }
  static func be32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (24 - 8 * $0)) & 0xff) } }

  /// KDFa (SP 800-108 counter mode with HMAC); the label includes its terminating zero octet.
  public static func kdfa(_ alg: UInt16, key: [UInt8], label: String, contextU: [UInt8], contextV: [UInt8], bits: Int)
    throws(TPMError) -> [UInt8]
  {
    var out: [UInt8] = []
    var counter: UInt32 = 1
    while out.count * 8 < bits {
      out += try hmac(
        alg, key: key, be32(counter) + Array(label.utf8) + [0] + contextU + contextV + be32(UInt32(clamping: bits)))
      counter += 1
    }
    return Array(out.prefix(bits / 8))
  }

  /// KDFe (SP 800-56A concatenation KDF) for ECDH-derived seeds.
  public static func kdfe(_ alg: UInt16, z: [UInt8], label: String, partyU: [UInt8], partyV: [UInt8], bits: Int)
    throws(TPMError) -> [UInt8]
  {
    var out: [UInt8] = []
    var counter: UInt32 = 1
    while out.count * 8 < bits {
      out += try digest(alg, be32(counter) + z + Array(label.utf8) + [0] + partyU + partyV)
      counter += 1
    }
    return Array(out.prefix(bits / 8))
  }
}

/// TPM2_MakeCredential done in software by the verifier (TPM 2.0 Part 1 §24): `secret` is sealed so that only the
/// TPM holding the endorsement key `ek` can release it, and only to an object loaded in it whose name is
/// `objectName` (the attestation key). ECC endorsement keys (P-256 or P-384) only.
public enum TPMCredential {
  public struct Challenge: Sendable, Equatable {
    /// TPM2B_ID_OBJECT, marshalled.
    public var credentialBlob: [UInt8]
    /// TPM2B_ENCRYPTED_SECRET, marshalled.
    public var encryptedSecret: [UInt8]
  }

  public static func make(ek: TPMECCPublic, objectName: [UInt8], secret: [UInt8]) throws(TPMError) -> Challenge {
    guard secret.count <= 64 else { throw .invalidArgument("credential longer than 64 bytes") }
    guard let sym = ek.symmetric, sym.alg == TPMConst.algAES, sym.mode == TPMConst.algCFB,
      sym.keyBits == 128 || sym.keyBits == 256
    else { throw .unsupported("endorsement key without AES-CFB protection") }
    let nameAlg = ek.nameAlg
    let digestBits = try TPMHash.size(nameAlg) * 8
    // The seed: ECDH between an ephemeral key and the EK, through KDFe.
    let z: [UInt8]
    let ephX: [UInt8]
    let ephY: [UInt8]
    let ekX: [UInt8]
    do {
      switch ek.curve {
      case TPMConst.curveP256:
        ekX = TPMECCPublic.pad(ek.x, 32)
        let ekKey = try P256.KeyAgreement.PublicKey(rawRepresentation: ekX + TPMECCPublic.pad(ek.y, 32))
        let eph = P256.KeyAgreement.PrivateKey()
        z = try eph.sharedSecretFromKeyAgreement(with: ekKey).withUnsafeBytes { Array($0) }
        let raw = Array(eph.publicKey.rawRepresentation)
        ephX = Array(raw.prefix(32))
        ephY = Array(raw.suffix(32))
      case TPMConst.curveP384:
        ekX = TPMECCPublic.pad(ek.x, 48)
        let ekKey = try P384.KeyAgreement.PublicKey(rawRepresentation: ekX + TPMECCPublic.pad(ek.y, 48))
        let eph = P384.KeyAgreement.PrivateKey()
        z = try eph.sharedSecretFromKeyAgreement(with: ekKey).withUnsafeBytes { Array($0) }
        let raw = Array(eph.publicKey.rawRepresentation)
        ephX = Array(raw.prefix(48))
        ephY = Array(raw.suffix(48))
      default:
        throw TPMError.unsupported("endorsement key curve 0x\(String(ek.curve, radix: 16))")
      }
    } catch let e as TPMError {
      throw e
    } catch {
      throw .malformed("endorsement key point is not on its curve")
    }
    let seed = try TPMHash.kdfe(nameAlg, z: z, label: "IDENTITY", partyU: ephX, partyV: ekX, bits: digestBits)
    let symKey = try TPMHash.kdfa(
      nameAlg, key: seed, label: "STORAGE", contextU: objectName, contextV: [], bits: Int(sym.keyBits))
    var plain = TPMWriter()
    plain.sized(secret)
    let encIdentity: [UInt8]
    do {
      encIdentity = Array(
        try AES._CFB.encrypt(
          plain.bytes, using: SymmetricKey(data: symKey), iv: AES._CFB.IV(ivBytes: [UInt8](repeating: 0, count: 16))))
    } catch {
      throw .malformed("AES-CFB failed")
    }
    let hmacKey = try TPMHash.kdfa(nameAlg, key: seed, label: "INTEGRITY", contextU: [], contextV: [], bits: digestBits)
    let outerHMAC = try TPMHash.hmac(nameAlg, key: hmacKey, encIdentity + objectName)
    var idObject = TPMWriter()
    idObject.sized(outerHMAC)
    idObject.raw(encIdentity)
    var blob = TPMWriter()
    blob.sized(idObject.bytes)
    var point = TPMWriter()
    point.sized(ephX)
    point.sized(ephY)
    var encSecret = TPMWriter()
    encSecret.sized(point.bytes)
    return Challenge(credentialBlob: blob.bytes, encryptedSecret: encSecret.bytes)
  }
}
