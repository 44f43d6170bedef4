import Crypto
import Foundation
import SwiftASN1
import X509

/// The OpenSSF Model Signing (OMS) signature file: Sigstore bundle v0.3 around a DSSE envelope around an in-toto
/// statement (see `shared/reference/model-signing-format.md`). Reading and writing only; policy lives in the verifier.
enum OMS {
  static let signatureFileName = "model.sig"
  static let mediaType = "application/vnd.dev.sigstore.bundle.v0.3+json"
  static let payloadType = "application/vnd.in-toto+json"
  static let statementType = "https://in-toto.io/Statement/v1"
  static let predicateType = "https://model_signing/signature/v1.0"
  static let maxSignatureFileBytes = 32 << 20

  /// DSSE v1 pre-authentication encoding. The type inside PAE is always the in-toto type (as the reference does).
  static func pae(_ payload: [UInt8]) -> [UInt8] {
    Array("DSSEv1 \(payloadType.utf8.count) \(payloadType) \(payload.count) ".utf8) + payload
  }

  /// SHA-256 over the concatenated raw resource digests, in the given order.
  static func rootDigest(_ digests: [[UInt8]]) -> [UInt8] {
    var hasher = SHA256()
    for d in digests { hasher.update(data: d) }
    return Array(hasher.finalize())
  }

  // MARK: Writing

  struct Resource {
    let path: RelativePath
    let digest: [UInt8]
  }

  /// The statement as protobuf `MessageToJson` writes it: 2-space indent, `": "`, non-ASCII as `\uXXXX`, no trailing
  /// newline. The predicate's key order is free in the format; we use a fixed one.
  static func statementJSON(subjectName: String, resources: [Resource], ignorePaths: [String]) -> [UInt8] {
    let root = rootDigest(resources.map(\.digest))
    var out = "{\n"
    out += "  \"_type\": \(quote(statementType)),\n"
    out += "  \"subject\": [\n    {\n"
    out += "      \"name\": \(quote(subjectName)),\n"
    out += "      \"digest\": {\n        \"sha256\": \(quote(Hex.encode(root)))\n      }\n"
    out += "    }\n  ],\n"
    out += "  \"predicateType\": \(quote(predicateType)),\n"
    out += "  \"predicate\": {\n"
    out += "    \"serialization\": {\n"
    out += "      \"method\": \"files\",\n"
    out += "      \"hash_type\": \"sha256\",\n"
    out += "      \"allow_symlinks\": false,\n"
    if ignorePaths.isEmpty {
      out += "      \"ignore_paths\": []\n"
    } else {
      out += "      \"ignore_paths\": [\n"
      out += ignorePaths.map { "        \(quote($0))" }.joined(separator: ",\n")
      out += "\n      ]\n"
    }
    out += "    },\n"
    if resources.isEmpty {
      out += "    \"resources\": []\n"
    } else {
      out += "    \"resources\": [\n"
      out += resources.map { r in
        "      {\n        \"name\": \(quote(r.path.name)),\n        \"algorithm\": \"sha256\",\n"
          + "        \"digest\": \(quote(Hex.encode(r.digest)))\n      }"
      }.joined(separator: ",\n")
      out += "\n    ]\n"
    }
    out += "  }\n}"
    return Array(out.utf8)
  }

  /// A JSON string literal as Python's `json.dumps(ensure_ascii=True)` writes it.
  static func quote(_ s: String) -> String {
    var out = "\""
    for scalar in s.unicodeScalars {
      switch scalar {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case "\n": out += "\\n"
      case "\r": out += "\\r"
      case "\t": out += "\\t"
      case "\u{08}": out += "\\b"
      case "\u{0C}": out += "\\f"
      default:
        if scalar.value >= 0x20 && scalar.value < 0x7F {
          out.unicodeScalars.append(scalar)
        } else if scalar.value > 0xFFFF {
          let v = scalar.value - 0x10000
          out += hex4(0xD800 + (v >> 10)) + hex4(0xDC00 + (v & 0x3FF))
        } else {
          out += hex4(scalar.value)
        }
      }
    }
    return out + "\""
  }

  private static func hex4(_ v: UInt32) -> String {
    let digits = Array("0123456789abcdef")
    return "\\u"
      + String([digits[Int(v >> 12 & 0xF)], digits[Int(v >> 8 & 0xF)], digits[Int(v >> 4 & 0xF)], digits[Int(v & 0xF)]])
  }

  /// The compact signature file, keys in the reference order.
  static func signatureFileJSON(material: String, payload: [UInt8], signature: [UInt8]) -> [UInt8] {
    let json =
      "{\"mediaType\":\(quote(mediaType)),\"verificationMaterial\":{\(material),\"tlogEntries\":[]},"
      + "\"dsseEnvelope\":{\"payload\":\"\(Data(payload).base64EncodedString())\",\"payloadType\":\(quote(payloadType)),"
      + "\"signatures\":[{\"sig\":\"\(Data(signature).base64EncodedString())\",\"keyid\":\"\"}]}}"
    return Array(json.utf8)
  }

  static func publicKeyMaterial(hint: String) -> String { "\"publicKey\":{\"hint\":\(quote(hint))}" }

  static func certificateMaterial(_ chainDER: [[UInt8]]) -> String {
    let items = chainDER.map { "{\"rawBytes\":\"\(Data($0).base64EncodedString())\"}" }.joined(separator: ",")
    return "\"x509CertificateChain\":{\"certificates\":[\(items)]}"
  }

  // MARK: Reading

  enum Material {
    /// Key method; the hint may be absent or empty (older bundles).
    case publicKey(hint: String?)
    /// Certificate method: leaf first, then untrusted intermediates, as DER-decoded certificates.
    case certificates([Certificate])
  }

  struct Envelope {
    let material: Material
    let payload: [UInt8]
    let signature: [UInt8]
  }

  private static let file = signatureFileName

  /// Parses `model.sig` strictly: unknown fields anywhere are refused, exactly one verification material, exactly one
  /// signature. Nothing here is trusted yet; the payload is returned as raw bytes and is not parsed.
  static func parseEnvelope(_ bytes: [UInt8]) throws(BundleError) -> Envelope {
    let k = BundleError.Kind.malformedSignature
    let root: JSONValue
    do {
      root = try StrictJSONParser.parse(bytes)
    } catch {
      throw BundleError(k, "\(file): not valid JSON (\(error.message) at byte \(error.offset))")
    }
    let top = try JSONObjectReader(root, path: "", file: file, kind: k)
    if top.value("messageSignature") != nil {
      throw BundleError(k, "\(file): 'messageSignature' bundles are not supported (DSSE envelope required)")
    }
    try top.rejectUnknown(["mediaType", "verificationMaterial", "dsseEnvelope"], kind: k)
    let media = try top.string("mediaType", kind: k)
    guard media.utf8.elementsEqual(mediaType.utf8) else {
      throw BundleError(k, "\(file): unsupported mediaType '\(media)' (expected \(mediaType))")
    }

    let vm = try top.object("verificationMaterial", kind: k)
    try vm.rejectUnknown(["publicKey", "x509CertificateChain", "certificate", "tlogEntries"], kind: k)
    if let tlog = vm.value("tlogEntries") {
      guard case .array(let entries) = tlog else {
        throw BundleError(k, "\(file): 'verificationMaterial.tlogEntries' must be an array")
      }
      // Key and certificate signatures carry no transparency-log entries; entries would go unchecked, so refuse them.
      guard entries.isEmpty else { throw BundleError(k, "\(file): transparency-log entries are not supported") }
    }
    let present = ["publicKey", "x509CertificateChain", "certificate"].filter { vm.value($0) != nil }
    guard present.count == 1 else {
      throw BundleError(
        k,
        "\(file): 'verificationMaterial' must hold exactly one of publicKey, x509CertificateChain, certificate (found \(present.count))"
      )
    }
    let material: Material
    switch present[0] {
    case "publicKey":
      let pk = try vm.object("publicKey", kind: k)
      // rawBytes/keyDetails: written by model_signing 1.0.x; the embedded key is never used (the configured key is).
      try pk.rejectUnknown(["hint", "rawBytes", "keyDetails"], kind: k)
      let hint = try pk.optionalString("hint", kind: k)
      _ = try pk.optionalString("rawBytes", kind: k)
      _ = try pk.optionalString("keyDetails", kind: k)
      material = .publicKey(hint: hint)
    case "x509CertificateChain":
      let chain = try vm.object("x509CertificateChain", kind: k)
      try chain.rejectUnknown(["certificates"], kind: k)
      let items = try chain.array("certificates", kind: k)
      guard !items.isEmpty else { throw BundleError(k, "\(file): 'x509CertificateChain.certificates' is empty") }
      guard items.count <= 10 else { throw BundleError(k, "\(file): certificate chain longer than 10") }
      var certificates: [Certificate] = []
      for (i, item) in items.enumerated() {
        let c = try JSONObjectReader(
          item, path: "verificationMaterial.x509CertificateChain.certificates[\(i)]", file: file, kind: k)
        try c.rejectUnknown(["rawBytes"], kind: k)
        let der = try base64(try c.string("rawBytes", kind: k), field: c.field("rawBytes"))
        do {
          certificates.append(try Certificate(derEncoded: der))
        } catch {
          throw BundleError(k, "\(file): '\(c.field("rawBytes"))' is not a DER X.509 certificate")
        }
      }
      material = .certificates(certificates)
    default:
      throw BundleError(
        k, "\(file): keyless Sigstore 'certificate' material is not supported (use key or certificate-chain signing)")
    }

    let env = try top.object("dsseEnvelope", kind: k)
    try env.rejectUnknown(["payload", "payloadType", "signatures"], kind: k)
    let payload = try base64(try env.string("payload", kind: k), field: env.field("payload"))
    let type = try env.string("payloadType", kind: k)
    guard type.utf8.elementsEqual(payloadType.utf8) else {
      throw BundleError(k, "\(file): unsupported payloadType '\(type)' (expected \(payloadType))")
    }
    let signatures = try env.array("signatures", kind: k)
    guard signatures.count == 1 else {
      throw BundleError(
        k, "\(file): 'dsseEnvelope.signatures' must hold exactly one signature (found \(signatures.count))")
    }
    let s = try JSONObjectReader(signatures[0], path: "dsseEnvelope.signatures[0]", file: file, kind: k)
    try s.rejectUnknown(["sig", "keyid"], kind: k)
    _ = try s.optionalString("keyid", kind: k)
    let sig = try base64(try s.string("sig", kind: k), field: s.field("sig"))
    guard !sig.isEmpty else { throw BundleError(k, "\(file): empty signature") }
    return Envelope(material: material, payload: payload, signature: sig)
  }

  private static func base64(_ text: String, field: String) throws(BundleError) -> [UInt8] {
    guard let data = Data(base64Encoded: text) else {
      throw BundleError(.malformedSignature, "\(file): '\(field)' is not valid base64")
    }
    return Array(data)
  }

  /// The verified statement's content.
  struct Statement {
    let rootDigest: [UInt8]
    let resources: [Resource]
    let ignorePaths: [String]
  }

  /// Parses the (already signature-verified) payload and applies our stricter rules: files/sha256 only, no symlinks,
  /// `ignore_paths` a subset of the defaults, exactly one subject, root digest recomputed, unknown fields refused.
  static func parseStatement(_ payload: [UInt8]) throws(BundleError) -> Statement {
    let k = BundleError.Kind.unsupportedPayload
    let f = "\(file) payload"
    let root: JSONValue
    do {
      root = try StrictJSONParser.parse(payload)
    } catch {
      throw BundleError(.malformedSignature, "\(f): not valid JSON (\(error.message) at byte \(error.offset))")
    }
    let top = try JSONObjectReader(root, path: "", file: f, kind: k)
    try top.rejectUnknown(["_type", "subject", "predicateType", "predicate"], kind: k)
    let type = try top.string("_type", kind: k)
    guard type.utf8.elementsEqual(statementType.utf8) else { throw BundleError(k, "\(f): unsupported _type '\(type)'") }
    let pType = try top.string("predicateType", kind: k)
    guard pType.utf8.elementsEqual(predicateType.utf8) else {
      throw BundleError(k, "\(f): unsupported predicateType '\(pType)'")
    }
    let subjects = try top.array("subject", kind: k)
    guard subjects.count == 1 else {
      throw BundleError(k, "\(f): expected exactly one subject, found \(subjects.count)")
    }
    let subject = try JSONObjectReader(subjects[0], path: "subject[0]", file: f, kind: k)
    try subject.rejectUnknown(["name", "digest"], kind: k)
    _ = try subject.optionalString("name", kind: k)
    let digest = try subject.object("digest", kind: k)
    try digest.rejectUnknown(["sha256"], kind: k)
    guard let claimedRoot = Hex.decodeLowercase(try digest.string("sha256", kind: k)), claimedRoot.count == 32 else {
      throw BundleError(k, "\(f): 'subject[0].digest.sha256' is not 64 lowercase hex digits")
    }

    let predicate = try top.object("predicate", kind: k)
    try predicate.rejectUnknown(["serialization", "resources"], kind: k)
    let ser = try predicate.object("serialization", kind: k)
    try ser.rejectUnknown(["method", "hash_type", "allow_symlinks", "ignore_paths", "shard_size"], kind: k)
    let method = try ser.string("method", kind: k)
    // `shards` is part of the format but refused: a shard list has no resource for an empty file, so adding or
    // removing one would go unseen (and model_signing's own CLI cannot verify shard signatures).
    guard method == "files" else {
      throw BundleError(
        k,
        "\(f): serialization method '\(method)' is not supported (only 'files'; re-sign with model_signing's default)")
    }
    guard ser.value("shard_size") == nil else {
      throw BundleError(k, "\(f): 'shard_size' is not valid for the files method")
    }
    let hashType = try ser.string("hash_type", kind: k)
    guard hashType == "sha256" else {
      throw BundleError(k, "\(f): hash_type '\(hashType)' is not supported (only 'sha256')")
    }
    // Older (1.0.x) signers omit allow_symlinks/ignore_paths; absent means false / none.
    if ser.value("allow_symlinks") != nil {
      guard try ser.bool("allow_symlinks", kind: k) == false else {
        throw BundleError(k, "\(f): the signer allowed symlinks (allow_symlinks must be false)")
      }
    }
    var ignorePaths: [String] = []
    if ser.value("ignore_paths") != nil {
      for (i, item) in try ser.array("ignore_paths", kind: k).enumerated() {
        guard case .string(let p) = item else { throw BundleError(k, "\(f): 'ignore_paths[\(i)]' must be a string") }
        // Stricter than the reference: the signer cannot widen what is excluded (e.g. "." would exclude everything).
        guard defaultIgnorePaths.contains(where: { Array($0.utf8) == Array(p.utf8) }) else {
          throw BundleError(
            k,
            "\(f): signer-chosen ignore path '\(p)' is not allowed (only \(defaultIgnorePaths.joined(separator: ", ")))"
          )
        }
        ignorePaths.append(p)
      }
    }

    var resources: [Resource] = []
    var seen = Set<RelativePath>()
    for (i, item) in try predicate.array("resources", kind: k).enumerated() {
      let r = try JSONObjectReader(item, path: "predicate.resources[\(i)]", file: f, kind: k)
      try r.rejectUnknown(["name", "algorithm", "digest"], kind: k)
      let name = try r.string("name", kind: k)
      let algorithm = try r.string("algorithm", kind: k)
      guard algorithm == "sha256" else {
        throw BundleError(k, "\(f): resource '\(name)': algorithm '\(algorithm)' is not supported")
      }
      guard let d = Hex.decodeLowercase(try r.string("digest", kind: k)), d.count == 32 else {
        throw BundleError(k, "\(f): resource '\(name)': digest is not 64 lowercase hex digits")
      }
      guard let path = RelativePath.parseSigned(name) else {
        throw BundleError(k, "\(f): resource name '\(name)' is not a plain relative path")
      }
      guard seen.insert(path).inserted else { throw BundleError(k, "\(f): resource '\(name)' is listed twice") }
      resources.append(Resource(path: path, digest: d))
    }
    // The root digest uses the listed order as given (the format says never re-sort).
    guard rootDigest(resources.map(\.digest)) == claimedRoot else {
      throw BundleError(k, "\(f): root digest does not match the resources")
    }
    return Statement(rootDigest: claimedRoot, resources: resources, ignorePaths: ignorePaths)
  }
}
