import Foundation
import Crypto
import NIOCore
import NIOEmbedded
import NIOHTTP1
import PalisadeAudit
import PalisadeBundle
import PalisadeCore
import PalisadeEgress
import PalisadeIdentity
import PalisadePolicy
import PalisadeProto
import PalisadeRuntime
import PalisadeServer
import PalisadeTPM
import PalisadeWire
import SwiftASN1
import SwiftProtobuf
import X509

/// The bodies of the fuzz targets: one per parser that sees outside bytes. Each takes the input bytes, runs the
/// parser exactly as the product does, and swallows every thrown error: a refusal is a correct answer. Only a
/// crash, a sanitizer report, a timeout or runaway memory is a finding.
///
/// The same bodies run under libFuzzer (`Fuzz/Driver`, `make fuzz`) and in `make test`, which replays every committed
/// corpus file and saved reproducer (`Tests/PalisadeFuzzReplayTests`).
public enum FuzzTarget: String, CaseIterable, Sendable {
  case inferRequest = "infer-request"
  case onnxModel = "onnx-model"
  case bundleSignature = "bundle-signature"
  case bundleManifest = "bundle-manifest"
  case bundleArchive = "bundle-archive"
  case jwt
  case jwks
  case policy
  case serverConfig = "server-config"
  case egressConfig = "egress-config"
  case egressHTTP = "egress-http"
  case egressInspector = "egress-inspector"
  case auditSegment = "audit-segment"
  case auditRecord = "audit-record"
  case auditCheckpoint = "audit-checkpoint"
  case pem
  case tpmEvidence = "tpm-evidence"

  /// Whether the body needs `async` (signature checks and unpacking are async in the product).
  public var isAsync: Bool { self == .bundleSignature || self == .bundleArchive }

  /// Runs a synchronous body; returns false for the async ones (use ``run(async:)``).
  public func run(_ data: [UInt8]) -> Bool {
    switch self {
    case .inferRequest: Targets.inferRequest(data)
    case .onnxModel: Targets.onnxModel(data)
    case .bundleManifest: Targets.bundleManifest(data)
    case .jwt: Targets.jwt(data)
    case .jwks: Targets.jwks(data)
    case .policy: Targets.policy(data)
    case .serverConfig: Targets.serverConfig(data)
    case .egressConfig: Targets.egressConfig(data)
    case .egressHTTP: Targets.egressHTTP(data)
    case .egressInspector: Targets.egressInspector(data)
    case .auditSegment: Targets.auditSegment(data)
    case .auditRecord: Targets.auditRecord(data)
    case .auditCheckpoint: Targets.auditCheckpoint(data)
    case .pem: Targets.pem(data)
    case .tpmEvidence: Targets.tpmEvidence(data)
    case .bundleSignature, .bundleArchive: return false
    }
    return true
  }

  /// Runs any body.
  public func run(async data: [UInt8]) async {
    switch self {
    case .bundleSignature: await Targets.bundleSignature(data)
    case .bundleArchive: await Targets.bundleArchive(data)
    default: _ = run(data)
    }
  }

  /// Whether `data` passes every check of the parsers behind this target, for the targets whose seeds are meant to
  /// (real tokens, signatures, logs, requests): proves that the corpus and `FuzzKeys` belong together, so that the
  /// fuzzer starts from inputs that reach the deepest code. Nil for the other targets.
  public func accepts(_ data: [UInt8]) async -> Bool? {
    switch self {
    case .jwt:
      guard let identity = Targets.identity else { return false }
      let verifier = TokenVerifier(settings: .init(audience: FuzzKeys.audience), issuers: Targets.issuers)
      return
        (try? verifier.verify(
          authorization: "Bearer " + String(decoding: data, as: UTF8.self), identity: identity, now: fuzzNow)) != nil
    case .bundleArchive:
      return await Targets.bundleArchive(data)
    case .bundleSignature:
      guard let trust = Targets.trust else { return false }
      do { try await BundleParsers.checkSignature(data, trust: trust, modelName: "digits", now: fuzzNow) } catch {
        return false
      }
      return true
    case .auditCheckpoint:
      guard let key = Targets.auditKey else { return false }
      return
        (try? SignedCheckpoint.verify(note: String(decoding: data, as: UTF8.self), key: key, expectedOrigin: key.name))
        != nil
    case .inferRequest:
      guard let request = try? Inference_ModelInferRequest(serializedBytes: data),
        let descriptor = Targets.descriptors[request.modelName],
        let decoded = try? WireTensorDecoder.decode(request)
      else { return false }
      return (try? InputValidator().validate(decoded, against: descriptor)) != nil
    case .tpmEvidence:
      // Each seed is one well-formed structure: it must get through its parser (and the key's P-256 point).
      if (try? TPMQuoteInfo(marshalled: data)) != nil || (try? TPMECDSASignature(marshalled: data)) != nil {
        return true
      }
      if let key = try? TPMECCPublic(marshalled: data) { return (try? key.p256SigningKey()) != nil }
      return (try? TPMEventLog.parse(String(decoding: data, as: UTF8.self)).replay()) != nil
    default:
      return nil
    }
  }

  /// Removes the scratch directory the file-based body (the bundle archive) writes in.
  public static func removeScratch() {
    try? FileManager.default.removeItem(atPath: Targets.scratch)
  }

  /// Runs any body from synchronous code (the libFuzzer callback, never a concurrency thread): async bodies run in
  /// a task while this thread waits.
  public func runBlocking(_ data: [UInt8]) {
    if run(data) { return }
    let done = DispatchSemaphore(value: 0)
    let target = self
    Task.detached {
      await target.run(async: data)
      done.signal()
    }
    done.wait()
  }
}

/// A fixed instant for every time check, so that a corpus of real tokens, certificates and signatures stays valid
/// and each input always takes the same path (libFuzzer wants determinism).
let fuzzNow = Date(timeIntervalSince1970: TimeInterval(FuzzKeys.now))

enum Targets {
  // MARK: ModelInfer request: protobuf decode, wire decode (typed, raw, BYTES framing, FP16/BF16), contract check

  /// Models with contracts covering every datatype family; the request's model name picks one.
  static let descriptors: [String: ModelDescriptor] = {
    func model(_ name: String, _ inputs: [TensorSpec], contract: ModelContract) -> ModelDescriptor {
      ModelDescriptor(
        name: name, version: "1", platform: "onnx", inputs: inputs,
        outputs: [
          TensorSpec(name: "probabilities", datatype: .fp32, shape: [-1, 10]),
          TensorSpec(name: "label", datatype: .int64, shape: [-1]),
        ],
        contract: contract)
    }
    let digits = model(
      "digits", [TensorSpec(name: "input", datatype: .fp32, shape: [-1, 64])],
      contract: ModelContract(
        maxBatch: 64,
        featureRanges: ["input": .init(min: Array(repeating: 0, count: 64), max: Array(repeating: 16, count: 64))],
        allowNonFinite: false))
    let half = model(
      "half",
      [
        TensorSpec(name: "x", datatype: .fp16, shape: [-1, 4]), TensorSpec(name: "y", datatype: .bf16, shape: [-1, 4]),
      ],
      contract: ModelContract(
        maxBatch: 8, featureRanges: ["x": .init(min: [-1, -1, -1, -1], max: [1, 1, 1, 1])], allowNonFinite: false))
    let text = model(
      "text",
      [
        TensorSpec(name: "text", datatype: .bytes, shape: [-1]),
        TensorSpec(name: "ids", datatype: .int64, shape: [-1, 3]),
      ],
      contract: ModelContract(maxBatch: 16, maxBytesElementLength: 64))
    let mixed = model(
      "mixed",
      [
        TensorSpec(name: "b", datatype: .bool, shape: [2]), TensorSpec(name: "u8", datatype: .uint8, shape: [-1]),
        TensorSpec(name: "i16", datatype: .int16, shape: [-1, -1]),
        TensorSpec(name: "u32", datatype: .uint32, shape: [-1]),
        TensorSpec(name: "u64", datatype: .uint64, shape: [1]),
        TensorSpec(name: "f64", datatype: .fp64, shape: [-1, 2]),
        TensorSpec(name: "i8", datatype: .int8, shape: [-1]), TensorSpec(name: "u16", datatype: .uint16, shape: [-1]),
        TensorSpec(name: "i32", datatype: .int32, shape: [-1]),
      ],
      contract: ModelContract(allowEmptyDimensions: true))
    return ["digits": digits, "half": half, "text": text, "mixed": mixed]
  }()

  static func inferRequest(_ data: [UInt8]) {
    guard let request = try? Inference_ModelInferRequest(serializedBytes: data) else { return }
    guard let decoded = try? WireTensorDecoder.decode(request) else { return }
    let descriptor = descriptors[request.modelName] ?? descriptors["digits"]
    guard let descriptor else { return }
    _ = try? InputValidator().validate(decoded, against: descriptor)
    _ = try? ResponseEncoder().requestedOutputs(request, descriptor: descriptor)
    // What the server would send back for tensors like these (typed and raw), as a round trip.
    var outputs = descriptor
    outputs.outputs = decoded.map { TensorSpec(name: $0.name, datatype: $0.datatype, shape: $0.shape) }
    _ = try? ResponseEncoder().encode(
      outputs: decoded, raw: !request.rawInputContents.isEmpty, descriptor: outputs, requestID: request.id)
  }

  // MARK: ONNX loader and planner

  static func onnxModel(_ data: [UInt8]) {
    // Loading parses, validates, and plans for the declared shapes (symbolic dimensions as 1).
    guard let model = try? ONNXModel.load(data: data, externalData: [:]) else { return }
    // A second plan with every symbolic dimension as 3 (a batch) goes through shape inference again.
    let shapes = model.inputs.map { $0.dims.map { if case .fixed(let n) = $0 { n } else { 3 } } }
    _ = try? model.plan(for: shapes)
  }

  // MARK: Signed bundles

  static let trust: TrustPolicy? = {
    guard let key = try? TrustedSigner.publicKey(pem: FuzzKeys.bundlePublicKeyPEM) else { return nil }
    return TrustPolicy(rules: [TrustPolicy.Rule(modelPattern: "**", signers: [key])])
  }()

  static func bundleSignature(_ data: [UInt8]) async {
    _ = try? BundleParsers.signatureEnvelope(data)
    guard let trust else { return }
    _ = try? await BundleParsers.checkSignature(data, trust: trust, modelName: "digits", now: fuzzNow)
  }

  static func bundleManifest(_ data: [UInt8]) {
    _ = try? BundleParsers.manifest(data)
  }

  /// A scratch directory per process (PALISADE_FUZZ_SCRATCH, else on tmpfs when there is one).
  static let scratch: String = {
    let base = FileManager.default.fileExists(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
    let dir = ProcessInfo.processInfo.environment["PALISADE_FUZZ_SCRATCH"] ?? "\(base)/palisade-fuzz-\(getpid())"
    try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return dir
  }()

  /// The first byte picks the form: even, the rest is a `.tar.zst` as shipped; odd, the rest is the tar stream, which
  /// is framed here as zstd so that mutations reach the tar reader instead of breaking zstd frames.
  @discardableResult
  static func bundleArchive(_ data: [UInt8]) async -> Bool {
    guard let trust, let mode = data.first else { return false }
    var archive = Array(data.dropFirst())
    if mode & 1 == 1 { archive = zstdRawFrame(archive) }
    let input = scratch + "/archive.tar.zst"
    let output = scratch + "/unpacked"
    try? FileManager.default.removeItem(atPath: output)
    // The directory again if `removeScratch()` took it away (the replay tests do, between targets).
    guard
      FileManager.default.createFile(atPath: input, contents: Data(archive))
        || ((try? FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)) != nil
          && FileManager.default.createFile(atPath: input, contents: Data(archive)))
    else { return false }
    let limits = UnpackLimits(maxTotalBytes: 4 << 20, maxFiles: 64, maxSignatureBytes: 1 << 20)
    let unpacked =
      (try? await BundleUnpacker.unpack(
        archive: input, into: output, trust: trust, modelName: "digits", now: fuzzNow, limits: limits)) != nil
    try? FileManager.default.removeItem(atPath: output)
    return unpacked
  }

  /// `bytes` as a zstd frame of raw (stored) blocks (RFC 8878 §3.1.1): what `zstd` writes for incompressible data,
  /// decoded by the same decompressor, at the cost of a copy. Compressing each input instead (level 1) took a fifth
  /// of the target's time, most of it setting up a compression context.
  static func zstdRawFrame(_ bytes: [UInt8]) -> [UInt8] {
    let blockMax = 1 << 17  // a 128 KiB window: Window_Descriptor exponent 7, mantissa 0
    var frame: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x38]  // magic; no content size, checksum or dictionary
    frame.reserveCapacity(frame.count + bytes.count + 3 * (bytes.count / blockMax + 1))
    var start = 0
    repeat {
      let size = min(blockMax, bytes.count - start)
      let last = start + size == bytes.count
      let header = UInt32(size) << 3 | (last ? 1 : 0)  // Block_Type 0: raw
      frame += [
        UInt8(truncatingIfNeeded: header), UInt8(truncatingIfNeeded: header >> 8),
        UInt8(truncatingIfNeeded: header >> 16),
      ]
      frame += bytes[start..<(start + size)]
      start += size
    } while start < bytes.count
    return frame
  }

  // MARK: Tokens

  static let identity: PeerIdentity? = {
    guard let id = try? SPIFFEID(parsing: FuzzKeys.clientSPIFFEID) else { return nil }
    return PeerIdentity(spiffeID: id, thumbprint: FuzzKeys.clientThumbprint)
  }()

  static let issuers: [TokenVerifier.Issuer] = {
    guard let keys = try? JWKS.parse(Data(FuzzKeys.jwks.utf8)) else { return [] }
    return [
      TokenVerifier.Issuer(issuer: FuzzKeys.issuer, kind: .oauth, keys: keys, requireCertificateBinding: true),
      TokenVerifier.Issuer(
        issuer: "spiffe://" + FuzzKeys.trustDomain, kind: .spiffe, keys: keys, trustDomain: FuzzKeys.trustDomain,
        requireCertificateBinding: false),
    ]
  }()

  static func jwt(_ data: [UInt8]) {
    guard let identity else { return }
    // A fresh verifier each time: its cache would make a repeated input take a different path.
    let verifier = TokenVerifier(settings: .init(audience: FuzzKeys.audience), issuers: issuers)
    let header = "Bearer " + String(decoding: data, as: UTF8.self)
    if let verified = try? verifier.verify(authorization: header, identity: identity, now: fuzzNow) {
      _ = try? verifier.revalidate(verified, now: fuzzNow)
    }
  }

  static func jwks(_ data: [UInt8]) {
    _ = try? JWKS.parse(Data(data))
  }

  // MARK: YAML files

  static func policy(_ data: [UInt8]) {
    _ = try? Policy.parse(String(decoding: data, as: UTF8.self), file: "policy.yaml")
  }

  static func serverConfig(_ data: [UInt8]) {
    _ = try? ServerConfig.parse(
      String(decoding: data, as: UTF8.self), file: "palisade.yaml", baseDirectory: "/nonexistent")
  }

  static func egressConfig(_ data: [UInt8]) {
    _ = try? EgressConfig.parse(
      String(decoding: data, as: UTF8.self), file: "egress.yaml", baseDirectory: "/nonexistent")
  }

  // MARK: Egress

  /// The sidecar's configuration for the egress targets: two destinations, every inspection on, a canary, a secret
  /// fingerprint and a small weight index.
  static let egress: (config: EgressConfig, inspector: Inspector)? = {
    guard var config = try? EgressConfig.parse(FuzzKeys.egressConfigYAML, baseDirectory: "/nonexistent") else {
      return nil
    }
    config.inspection.secretSHA256 = [
      SHA256.hash(data: Array(FuzzKeys.secret.utf8)).map { String(hexByte: $0) }.joined()
    ]
    var builder = WeightIndex.Builder(window: 64, stride: 32, minDistinctBytes: 16)
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    let weights: [UInt8] = (0..<4096).map { _ in
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return UInt8(truncatingIfNeeded: state >> 56)
    }
    weights.withUnsafeBytes { builder.add($0, source: "fuzz.onnx") }
    let inspector = Inspector(
      settings: config.inspection, canaries: [Canary(FuzzKeys.canary, source: "fuzz")], weights: builder.build())
    return (config, inspector)
  }()

  /// Bytes as a client sends them to the proxy: NIO's HTTP/1.1 decoder as the proxy configures it, then what the
  /// proxy does with each request (codings, target forms, the allowlist) and the inspector over URL, headers, body.
  static func egressHTTP(_ data: [UInt8]) {
    guard let egress else { return }
    let channel = EmbeddedChannel()
    defer { _ = try? channel.finish() }
    do {
      try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
      var buffer = channel.allocator.buffer(capacity: data.count)
      buffer.writeBytes(data)
      try channel.writeInbound(buffer)
    } catch {
      // A parse error still leaves the parts decoded before it.
    }
    var head: HTTPRequestHead?
    var body: [UInt8] = []
    while let part = try? channel.readInbound(as: HTTPServerRequestPart.self) {
      switch part {
      case .head(let h):
        head = h
        body = []
        EgressParsers.examine(h, destinations: egress.config.destinations)
      case .body(let b):
        if body.count < egress.config.maxBodyBytes { body.append(contentsOf: b.readableBytesView) }
      case .end:
        if let h = head {
          _ = egress.inspector.inspect(uri: h.uri, headers: h.headers.map { ($0.name, $0.value) }, body: body)
        }
        head = nil
      }
    }
  }

  static func egressInspector(_ data: [UInt8]) {
    guard let egress else { return }
    _ = egress.inspector.inspect(uri: "/", headers: [], body: data)
  }

  // MARK: Audit log

  static let auditKey: AuditVerifyingKey? = try? AuditVerifyingKey(verifierKey: FuzzKeys.auditVerifierKey)

  /// A segment file as found on disk, read by the verifier (`palisade audit verify`), which frames, checks and
  /// decodes every record and rebuilds the tree. The bytes go in directly, not through a file: the directory
  /// listing and file reads around them see no outside bytes, and skipping them makes the target tens of times faster.
  static func auditSegment(_ data: [UInt8]) {
    guard let auditKey else { return }
    _ = try? AuditVerifier.verify(segments: [("segment-00000000000000000000.log", 0)], key: auditKey) { name in
      name == "checkpoints.log" ? nil : data
    }
  }

  /// One record's canonical JSON (frames carry a CRC, so mutations of a segment rarely reach this decoder).
  static func auditRecord(_ data: [UInt8]) {
    if let record = try? AuditRecord.decodeCanonical(data) { _ = record.canonicalJSON() }
  }

  /// A signed-note checkpoint.
  static func auditCheckpoint(_ data: [UInt8]) {
    guard let auditKey else { return }
    let note = String(decoding: data, as: UTF8.self)
    _ = try? SignedCheckpoint.verify(note: note, key: auditKey, expectedOrigin: auditKey.name)
    _ = try? AuditVerifyingKey(verifierKey: note)
  }

  // MARK: PEM and certificates

  /// Every PEM reading path of Palisade's own: certificate bundles (with the SPIFFE identity taken from a leaf),
  /// bundle signing and trust keys, token signing keys, the audit key.
  static func pem(_ data: [UInt8]) {
    let text = String(decoding: data, as: UTF8.self)
    if let documents = try? PEMDocument.parseMultiple(pemString: text) {
      for document in documents where document.discriminator == "CERTIFICATE" {
        guard let certificate = try? Certificate(derEncoded: document.derBytes) else { continue }
        _ = try? PeerIdentity(certificate: certificate)
      }
    }
    _ = try? BundlePublicKey(pem: text)
    _ = try? BundleSigningKey(pem: text)
    _ = try? TrustedSigner.certificate(rootsPEM: text, identity: SignerIdentityRequirement(subjectCommonName: "fuzz"))
    _ = try? TokenSigningKey(pem: text)
    _ = try? AuditVerifyingKey(pem: text, name: "fuzz")
    _ = try? SPIFFEID(parsing: text)
  }
}

extension Targets {
  // MARK: TPM evidence

  /// What a caller's appraisal parses from a server's TPM evidence (outside bytes to the client): the quote's
  /// TPMS_ATTEST, its TPMT_SIGNATURE, the attestation and endorsement keys' TPMT_PUBLIC (then their names, the P-256
  /// key and a software MakeCredential against them), and the measurement event log (then its replay).
  static func tpmEvidence(_ data: [UInt8]) {
    if let quote = try? TPMQuoteInfo(marshalled: data) {
      _ = quote.selections.count + quote.pcrDigest.count
    }
    if let signature = try? TPMECDSASignature(marshalled: data) {
      _ = signature.verifies(data, key: fuzzTPMKey.publicKey)
    }
    if let key = try? TPMECCPublic(marshalled: data) {
      _ = try? key.name
      _ = key.isRestrictedP256SigningKey
      _ = try? key.p256SigningKey()
      _ = try? TPMCredential.make(
        ek: key, objectName: [0x00, 0x0B] + [UInt8](repeating: 1, count: 32), secret: [1, 2, 3])
    }
    if let log = try? TPMEventLog.parse(String(decoding: data, as: UTF8.self)) {
      _ = try? log.replay()
    }
  }
}

/// A fixed key for the signature check (the check's answer does not matter, only that it cannot crash).
private let fuzzTPMKey = P256.Signing.PrivateKey()

extension String {
  /// Two lowercase hex digits.
  init(hexByte byte: UInt8) {
    let digits = Array("0123456789abcdef")
    self.init([digits[Int(byte >> 4)], digits[Int(byte & 0x0F)]])
  }
}
