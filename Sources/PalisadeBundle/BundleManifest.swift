public import Foundation

/// `manifest.json`: what the bundle holds and how it must be served. Decoded strictly (unknown fields, duplicate keys,
/// wrong types and inconsistent values are refused with the field named), and only from a `VerifiedBundle`.
///
/// ```json
/// {
///   "schema": "palisade.bundle/v1",
///   "name": "digits", "version": 3,
///   "created": "2025-01-01T00:00:00Z", "expires": "2026-01-01T00:00:00Z",
///   "model_file": "model.onnx",
///   "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [-1, 64],
///               "feature_range": {"min": [0, ...], "max": [16, ...]},
///               "reference_statistics": {"mean": [...], "std": [...], "covariance_diagonal": [...]}}],
///   "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
///   "labels": ["0", "1", ...],
///   "output_policy": {"top_k": 3, "round_decimals": 4, "label_only": false, "pad_to_bucket_bytes": 256},
///   "screening_policy": {"ood_threshold": 6.0, "action": "flag"},
///   "max_batch": 32,
///   "canary_tokens": ["..."]
/// }
/// ```
public struct BundleManifest: Sendable, Hashable, Codable {
  /// The only schema id this version understands.
  public static let schemaID = "palisade.bundle/v1"

  /// Open Inference Protocol datatypes.
  public enum Datatype: String, Sendable, Hashable, Codable, CaseIterable {
    case bool = "BOOL"
    case uint8 = "UINT8"
    case uint16 = "UINT16"
    case uint32 = "UINT32"
    case uint64 = "UINT64"
    case int8 = "INT8"
    case int16 = "INT16"
    case int32 = "INT32"
    case int64 = "INT64"
    case fp16 = "FP16"
    case bf16 = "BF16"
    case fp32 = "FP32"
    case fp64 = "FP64"
    case bytes = "BYTES"
  }

  /// Per-feature bounds (one value per element of the last dimension).
  public struct FeatureRange: Sendable, Hashable, Codable {
    public var min: [Double]
    public var max: [Double]
    public init(min: [Double], max: [Double]) {
      self.min = min
      self.max = max
    }
  }

  /// Reference statistics of the training inputs, for out-of-distribution screening. At most one of `covariance`
  /// (full matrix, row-major rows) and `covarianceDiagonal`.
  public struct ReferenceStatistics: Sendable, Hashable, Codable {
    public var mean: [Double]
    public var std: [Double]
    public var covariance: [[Double]]?
    public var covarianceDiagonal: [Double]?

    enum CodingKeys: String, CodingKey, CaseIterable {
      case mean, std, covariance
      case covarianceDiagonal = "covariance_diagonal"
    }

    public init(mean: [Double], std: [Double], covariance: [[Double]]? = nil, covarianceDiagonal: [Double]? = nil) {
      self.mean = mean
      self.std = std
      self.covariance = covariance
      self.covarianceDiagonal = covarianceDiagonal
    }
  }

  /// A model input or output.
  public struct Tensor: Sendable, Hashable, Codable {
    public var name: String
    public var datatype: Datatype
    /// Dimensions; -1 marks a variable dimension.
    public var shape: [Int64]
    public var featureRange: FeatureRange?
    public var referenceStatistics: ReferenceStatistics?

    enum CodingKeys: String, CodingKey, CaseIterable {
      case name, datatype, shape
      case featureRange = "feature_range"
      case referenceStatistics = "reference_statistics"
    }

    public init(
      name: String, datatype: Datatype, shape: [Int64], featureRange: FeatureRange? = nil,
      referenceStatistics: ReferenceStatistics? = nil
    ) {
      self.name = name
      self.datatype = datatype
      self.shape = shape
      self.featureRange = featureRange
      self.referenceStatistics = referenceStatistics
    }
  }

  /// How outputs are hardened before they leave the server.
  public struct OutputPolicy: Sendable, Hashable, Codable {
    public var topK: Int?
    public var roundDecimals: Int?
    public var labelOnly: Bool?
    public var padToBucketBytes: Int?

    enum CodingKeys: String, CodingKey, CaseIterable {
      case topK = "top_k"
      case roundDecimals = "round_decimals"
      case labelOnly = "label_only"
      case padToBucketBytes = "pad_to_bucket_bytes"
    }

    public init(topK: Int? = nil, roundDecimals: Int? = nil, labelOnly: Bool? = nil, padToBucketBytes: Int? = nil) {
      self.topK = topK
      self.roundDecimals = roundDecimals
      self.labelOnly = labelOnly
      self.padToBucketBytes = padToBucketBytes
    }
  }

  /// What to do with inputs whose out-of-distribution score exceeds the threshold.
  public struct ScreeningPolicy: Sendable, Hashable, Codable {
    public enum Action: String, Sendable, Hashable, Codable {
      case flag, reject
    }
    public var oodThreshold: Double
    public var action: Action

    enum CodingKeys: String, CodingKey, CaseIterable {
      case oodThreshold = "ood_threshold"
      case action
    }

    public init(oodThreshold: Double, action: Action) {
      self.oodThreshold = oodThreshold
      self.action = action
    }
  }

  public var schema: String
  public var name: String
  /// Positive; a bundle older than the last accepted version of its name is refused (see `AcceptedVersions`).
  public var version: Int
  public var created: Date
  public var expires: Date
  /// Path of the model file inside the bundle (must be one of the signed files).
  public var modelFile: String
  public var inputs: [Tensor]
  public var outputs: [Tensor]
  public var labels: [String]?
  public var outputPolicy: OutputPolicy?
  public var screeningPolicy: ScreeningPolicy?
  public var maxBatch: Int?
  public var canaryTokens: [String]?
  /// Whether inputs may have a zero-sized dimension (an empty batch). Absent: no; most models and runtimes are
  /// not written for empty tensors, and a caller must not be able to make the model fail.
  public var allowEmptyDimensions: Bool?

  enum CodingKeys: String, CodingKey, CaseIterable {
    case schema, name, version, created, expires
    case modelFile = "model_file"
    case inputs, outputs, labels
    case outputPolicy = "output_policy"
    case screeningPolicy = "screening_policy"
    case maxBatch = "max_batch"
    case canaryTokens = "canary_tokens"
    case allowEmptyDimensions = "allow_empty_dimensions"
  }

  public init(
    name: String, version: Int, created: Date, expires: Date, modelFile: String, inputs: [Tensor], outputs: [Tensor],
    labels: [String]? = nil, outputPolicy: OutputPolicy? = nil, screeningPolicy: ScreeningPolicy? = nil,
    maxBatch: Int? = nil, canaryTokens: [String]? = nil
  ) {
    self.schema = Self.schemaID
    self.name = name
    self.version = version
    self.created = created
    self.expires = expires
    self.modelFile = modelFile
    self.inputs = inputs
    self.outputs = outputs
    self.labels = labels
    self.outputPolicy = outputPolicy
    self.screeningPolicy = screeningPolicy
    self.maxBatch = maxBatch
    self.canaryTokens = canaryTokens
  }

  public init(from decoder: any Decoder) throws {
    try rejectUnknownKeys(decoder, CodingKeys.self)
    let c = try decoder.container(keyedBy: CodingKeys.self)
    schema = try c.decode(String.self, forKey: .schema)
    guard schema == Self.schemaID else {
      throw DecodingError.dataCorruptedError(
        forKey: .schema, in: c, debugDescription: "unsupported schema '\(schema)' (expected \(Self.schemaID))")
    }
    name = try c.decode(String.self, forKey: .name)
    version = try c.decode(Int.self, forKey: .version)
    created = try decodeRFC3339(c, .created)
    expires = try decodeRFC3339(c, .expires)
    modelFile = try c.decode(String.self, forKey: .modelFile)
    inputs = try c.decode([Tensor].self, forKey: .inputs)
    outputs = try c.decode([Tensor].self, forKey: .outputs)
    labels = try c.decodeIfPresent([String].self, forKey: .labels)
    outputPolicy = try c.decodeIfPresent(OutputPolicy.self, forKey: .outputPolicy)
    screeningPolicy = try c.decodeIfPresent(ScreeningPolicy.self, forKey: .screeningPolicy)
    maxBatch = try c.decodeIfPresent(Int.self, forKey: .maxBatch)
    canaryTokens = try c.decodeIfPresent([String].self, forKey: .canaryTokens)
    allowEmptyDimensions = try c.decodeIfPresent(Bool.self, forKey: .allowEmptyDimensions)
  }

  public func encode(to encoder: any Encoder) throws {
    var c = encoder.container(keyedBy: CodingKeys.self)
    try c.encode(schema, forKey: .schema)
    try c.encode(name, forKey: .name)
    try c.encode(version, forKey: .version)
    try c.encode(formatRFC3339(created), forKey: .created)
    try c.encode(formatRFC3339(expires), forKey: .expires)
    try c.encode(modelFile, forKey: .modelFile)
    try c.encode(inputs, forKey: .inputs)
    try c.encode(outputs, forKey: .outputs)
    try c.encodeIfPresent(labels, forKey: .labels)
    try c.encodeIfPresent(outputPolicy, forKey: .outputPolicy)
    try c.encodeIfPresent(screeningPolicy, forKey: .screeningPolicy)
    try c.encodeIfPresent(maxBatch, forKey: .maxBatch)
    try c.encodeIfPresent(canaryTokens, forKey: .canaryTokens)
    try c.encodeIfPresent(allowEmptyDimensions, forKey: .allowEmptyDimensions)
  }

  /// Pretty-printed JSON with sorted keys (for `palisade bundle init`).
  public func encodedJSON() throws(BundleError) -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    do {
      return Array(try encoder.encode(self)) + [0x0A]
    } catch {
      throw BundleError(.invalidManifest, "\(bundleManifestFileName): cannot encode: \(error)")
    }
  }

  /// Decodes and validates manifest bytes. Internal on purpose: public callers go through `VerifiedBundle`, so nothing
  /// unverified is ever parsed.
  static func decode(_ bytes: [UInt8]) throws(BundleError) -> BundleManifest {
    let file = bundleManifestFileName
    guard bytes.count <= 16 << 20 else { throw BundleError(.invalidManifest, "\(file): larger than 16 MiB") }
    // Our strict reader first: duplicate keys and malformed JSON are refused before Foundation sees the bytes.
    let root: JSONValue
    do {
      root = try StrictJSONParser.parse(bytes)
    } catch {
      throw BundleError(.invalidManifest, "\(file): not valid JSON (\(error.message) at byte \(error.offset))")
    }
    // Integer fields are checked here, naming the field: Foundation reports an integer it cannot represent (1e300,
    // 2^63, 1.5) only as "not valid JSON".
    try checkIntegerFields(root)
    let manifest: BundleManifest
    do {
      manifest = try JSONDecoder().decode(BundleManifest.self, from: Data(bytes))
    } catch let error as DecodingError {
      throw BundleError(.invalidManifest, "\(file): \(describe(error))")
    } catch {
      throw BundleError(.invalidManifest, "\(file): \(error)")
    }
    try manifest.validate()
    return manifest
  }

  /// Fields that hold integers (paths as `describe` writes them; `[]` for any array element).
  static let integerFields: Set<String> = [
    "version", "max_batch", "inputs[].shape[]", "outputs[].shape[]", "output_policy.top_k",
    "output_policy.round_decimals",
    "output_policy.pad_to_bucket_bytes",
  ]

  /// Refuses any value of an integer field that is not a plain decimal integer within Int64.
  static func checkIntegerFields(_ root: JSONValue) throws(BundleError) {
    func visit(_ value: JSONValue, pattern: String, path: String) throws(BundleError) {
      switch value {
      case .object(let members):
        for (key, member) in members {
          let p = pattern.isEmpty ? key : "\(pattern).\(key)"
          let shown = path.isEmpty ? key : "\(path).\(key)"
          try visit(member, pattern: p, path: shown)
        }
      case .array(let items):
        for (i, item) in items.enumerated() { try visit(item, pattern: pattern + "[]", path: "\(path)[\(i)]") }
      case .number(let text, _) where integerFields.contains(pattern):
        let digits = text.hasPrefix("-") ? text.dropFirst() : Substring(text)
        guard !digits.isEmpty, digits.utf8.allSatisfy({ $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }),
          Int64(text) != nil
        else {
          let shown = text.count > 32 ? String(text.prefix(32)) + "…" : text
          throw BundleError(
            .invalidManifest,
            "\(bundleManifestFileName): field '\(path)': \(shown) is not an integer from -2^63 to 2^63-1")
        }
      default:
        break
      }
    }
    try visit(root, pattern: "", path: "")
  }

  /// Most elements the fixed dimensions of one tensor may hold (2^31 - 1): far beyond any request the server
  /// accepts, and small enough that byte sizes derived from it cannot overflow.
  public static let maxFixedElements = Int64(Int32.max)

  /// What a model name may be, in bundles and therefore in requests.
  public static let modelNameRule = "1-256 characters of A-Z a-z 0-9 . _ - / (no leading, trailing or double '/')"

  /// Whether `name` follows ``modelNameRule``: ASCII only, so that two names are the same model exactly when their
  /// bytes are equal (Swift's `String` equality would also equate canonically equivalent Unicode).
  public static func isValidModelName(_ name: String) -> Bool {
    !name.isEmpty && name.utf8.count <= 256 && name.unicodeScalars.allSatisfy(isNameScalar)
      && !name.hasPrefix("/") && !name.hasSuffix("/") && !name.contains("//")
  }

  /// Consistency checks beyond types. Throws naming the field.
  public func validate() throws(BundleError) {
    let file = bundleManifestFileName
    func fail(_ field: String, _ why: String) -> BundleError {
      BundleError(.invalidManifest, "\(file): field '\(field)': \(why)")
    }
    guard Self.isValidModelName(name) else { throw fail("name", "must be \(Self.modelNameRule)") }
    guard version > 0 else { throw fail("version", "must be a positive integer") }
    guard created <= expires else { throw fail("expires", "is before 'created'") }
    guard RelativePath.parseSigned(modelFile) != nil, modelFile != bundleManifestFileName,
      modelFile != OMS.signatureFileName
    else {
      throw fail("model_file", "must be a relative path to the model inside the bundle")
    }
    guard !inputs.isEmpty else { throw fail("inputs", "must not be empty") }
    guard !outputs.isEmpty else { throw fail("outputs", "must not be empty") }
    for (list, label) in [(inputs, "inputs"), (outputs, "outputs")] {
      var names = Set<[UInt8]>()
      for (i, t) in list.enumerated() {
        let f = "\(label)[\(i)]"
        guard !t.name.isEmpty else { throw fail("\(f).name", "must not be empty") }
        guard names.insert(Array(t.name.utf8)).inserted else { throw fail("\(f).name", "duplicate name '\(t.name)'") }
        guard t.shape.count <= 16 else { throw fail("\(f).shape", "more than 16 dimensions") }
        guard t.shape.allSatisfy({ $0 >= -1 }) else {
          throw fail("\(f).shape", "dimensions must be -1 (variable) or >= 0")
        }
        // Fixed dimensions multiply into buffer sizes (warm-up, validation): bound them before anything does.
        var fixedElements: Int64 = 1
        for d in t.shape where d > 0 {
          let (p, o) = fixedElements.multipliedReportingOverflow(by: d)
          guard !o, p <= Self.maxFixedElements else {
            throw fail("\(f).shape", "the fixed dimensions hold more than \(Self.maxFixedElements) elements")
          }
          fixedElements = p
        }
        let features: Int? = t.shape.last.flatMap { $0 > 0 ? Int(exactly: $0) : nil }
        if let r = t.featureRange {
          guard label == "inputs" else { throw fail("\(f).feature_range", "only inputs have ranges") }
          guard r.min.count == r.max.count, !r.min.isEmpty else {
            throw fail("\(f).feature_range", "min and max must have the same, non-zero length")
          }
          if let features, features != r.min.count {
            throw fail("\(f).feature_range", "has \(r.min.count) values but the last dimension is \(features)")
          }
          for (j, (lo, hi)) in zip(r.min, r.max).enumerated() where !(lo.isFinite && hi.isFinite && lo <= hi) {
            throw fail("\(f).feature_range", "min[\(j)] must be <= max[\(j)] and both finite")
          }
        }
        if let s = t.referenceStatistics {
          let f2 = "\(f).reference_statistics"
          guard label == "inputs" else { throw fail(f2, "only inputs have reference statistics") }
          let n = s.mean.count
          guard n > 0, s.std.count == n else { throw fail(f2, "mean and std must have the same, non-zero length") }
          if let features, features != n { throw fail(f2, "has \(n) values but the last dimension is \(features)") }
          guard s.mean.allSatisfy(\.isFinite) else { throw fail("\(f2).mean", "values must be finite") }
          // A feature constant in the training data has std 0; the server floors variances when it scores.
          guard s.std.allSatisfy({ $0.isFinite && $0 >= 0 }), s.std.contains(where: { $0 > 0 }) else {
            throw fail("\(f2).std", "values must be finite and >= 0, at least one > 0")
          }
          guard s.covariance == nil || s.covarianceDiagonal == nil else {
            throw fail(f2, "give either 'covariance' or 'covariance_diagonal', not both")
          }
          if let cov = s.covariance {
            guard cov.count == n, cov.allSatisfy({ $0.count == n }) else {
              throw fail("\(f2).covariance", "must be a \(n)x\(n) matrix")
            }
            guard cov.allSatisfy({ $0.allSatisfy(\.isFinite) }) else {
              throw fail("\(f2).covariance", "values must be finite")
            }
            for a in 0..<n {
              guard cov[a][a] >= 0 else { throw fail("\(f2).covariance", "diagonal must be >= 0") }
              for b in 0..<a where abs(cov[a][b] - cov[b][a]) > 1e-9 * max(1, abs(cov[a][b])) {
                throw fail("\(f2).covariance", "must be symmetric")
              }
            }
          }
          if let diag = s.covarianceDiagonal {
            guard diag.count == n else { throw fail("\(f2).covariance_diagonal", "must have \(n) values") }
            guard diag.allSatisfy({ $0.isFinite && $0 >= 0 }), diag.contains(where: { $0 > 0 }) else {
              throw fail("\(f2).covariance_diagonal", "values must be finite and >= 0, at least one > 0")
            }
          }
        }
      }
    }
    if let labels {
      guard labels.count <= 1_000_000 else { throw fail("labels", "too many labels") }
    }
    if let p = outputPolicy {
      if let k = p.topK, k < 1 { throw fail("output_policy.top_k", "must be >= 1") }
      if let d = p.roundDecimals, !(0...15).contains(d) { throw fail("output_policy.round_decimals", "must be 0-15") }
      if let b = p.padToBucketBytes, b < 1 { throw fail("output_policy.pad_to_bucket_bytes", "must be >= 1") }
      if p.labelOnly == true, labels?.isEmpty ?? true { throw fail("output_policy.label_only", "needs 'labels'") }
    }
    if let s = screeningPolicy {
      guard s.oodThreshold.isFinite, s.oodThreshold > 0 else {
        throw fail("screening_policy.ood_threshold", "must be finite and > 0")
      }
      guard inputs.contains(where: { $0.referenceStatistics != nil }) else {
        throw fail("screening_policy", "needs reference_statistics on an input")
      }
    }
    if let b = maxBatch, b < 1 { throw fail("max_batch", "must be >= 1") }
    if let tokens = canaryTokens, tokens.contains(where: \.isEmpty) {
      throw fail("canary_tokens", "must not contain empty strings")
    }
  }
}

private func isNameScalar(_ s: Unicode.Scalar) -> Bool {
  switch s {
  case "a"..."z", "A"..."Z", "0"..."9", ".", "_", "-", "/": true
  default: false
  }
}

extension VerifiedBundle {
  /// Parses and checks the verified manifest: the name equals the requested model name (or, when the bundle was
  /// verified without one, the signer is allowed for the manifest's name), the model file is among the verified
  /// files, and the bundle has not expired at `now`.
  public func manifest(now: Date = Date()) throws(BundleError) -> BundleManifest {
    guard let bytes = manifestBytes else {
      throw BundleError(.invalidManifest, "\(bundleManifestFileName): missing from the signed files")
    }
    let manifest = try BundleManifest.decode(bytes)
    if let requested = requestedModelName {
      guard manifest.name.utf8.elementsEqual(requested.utf8) else {
        throw BundleError(
          .invalidManifest,
          "\(bundleManifestFileName): name '\(manifest.name)' is not the requested model '\(requested)'")
      }
    }
    guard signerIsAllowed(for: manifest.name) else {
      if trust.ruleIndex(for: manifest.name) == nil {
        throw BundleError(.untrustedSignature, "no trust rule for model '\(manifest.name)'")
      }
      throw BundleError(.untrustedSignature, "signer not allowed for model '\(manifest.name)'")
    }
    guard verifiedDigest(manifest.modelFile) != nil else {
      throw BundleError(
        .invalidManifest, "\(bundleManifestFileName): model_file '\(manifest.modelFile)' is not among the signed files")
    }
    guard manifest.expires >= now else {
      throw BundleError(
        .expired, "bundle '\(manifest.name)' version \(manifest.version) expired at \(formatRFC3339(manifest.expires))")
    }
    return manifest
  }
}

// MARK: Strict decoding helpers

private struct AnyKey: CodingKey {
  var stringValue: String
  var intValue: Int? { nil }
  init(stringValue: String) { self.stringValue = stringValue }
  init?(intValue: Int) { nil }
}

/// Refuses keys that `Keys` does not name (JSONDecoder would silently drop them).
func rejectUnknownKeys<Keys: CodingKey & CaseIterable>(_ decoder: any Decoder, _: Keys.Type) throws {
  let raw = try decoder.container(keyedBy: AnyKey.self)
  let known = Keys.allCases.map { Array($0.stringValue.utf8) }
  for key in raw.allKeys where !known.contains(Array(key.stringValue.utf8)) {
    throw DecodingError.dataCorrupted(
      .init(codingPath: decoder.codingPath + [key], debugDescription: "unknown field"))
  }
}

extension BundleManifest.Tensor {
  public init(from decoder: any Decoder) throws {
    try rejectUnknownKeys(decoder, CodingKeys.self)
    let c = try decoder.container(keyedBy: CodingKeys.self)
    name = try c.decode(String.self, forKey: .name)
    datatype = try c.decode(BundleManifest.Datatype.self, forKey: .datatype)
    shape = try c.decode([Int64].self, forKey: .shape)
    featureRange = try c.decodeIfPresent(BundleManifest.FeatureRange.self, forKey: .featureRange)
    referenceStatistics = try c.decodeIfPresent(BundleManifest.ReferenceStatistics.self, forKey: .referenceStatistics)
  }
}

extension BundleManifest.FeatureRange {
  enum CodingKeys: String, CodingKey, CaseIterable { case min, max }
  public init(from decoder: any Decoder) throws {
    try rejectUnknownKeys(decoder, CodingKeys.self)
    let c = try decoder.container(keyedBy: CodingKeys.self)
    min = try c.decode([Double].self, forKey: .min)
    max = try c.decode([Double].self, forKey: .max)
  }
}

extension BundleManifest.ReferenceStatistics {
  public init(from decoder: any Decoder) throws {
    try rejectUnknownKeys(decoder, CodingKeys.self)
    let c = try decoder.container(keyedBy: CodingKeys.self)
    mean = try c.decode([Double].self, forKey: .mean)
    std = try c.decode([Double].self, forKey: .std)
    covariance = try c.decodeIfPresent([[Double]].self, forKey: .covariance)
    covarianceDiagonal = try c.decodeIfPresent([Double].self, forKey: .covarianceDiagonal)
  }
}

extension BundleManifest.OutputPolicy {
  public init(from decoder: any Decoder) throws {
    try rejectUnknownKeys(decoder, CodingKeys.self)
    let c = try decoder.container(keyedBy: CodingKeys.self)
    topK = try c.decodeIfPresent(Int.self, forKey: .topK)
    roundDecimals = try c.decodeIfPresent(Int.self, forKey: .roundDecimals)
    labelOnly = try c.decodeIfPresent(Bool.self, forKey: .labelOnly)
    padToBucketBytes = try c.decodeIfPresent(Int.self, forKey: .padToBucketBytes)
  }
}

extension BundleManifest.ScreeningPolicy {
  public init(from decoder: any Decoder) throws {
    try rejectUnknownKeys(decoder, CodingKeys.self)
    let c = try decoder.container(keyedBy: CodingKeys.self)
    oodThreshold = try c.decode(Double.self, forKey: .oodThreshold)
    action = try c.decode(Action.self, forKey: .action)
  }
}

private func decodeRFC3339<K: CodingKey>(_ c: KeyedDecodingContainer<K>, _ key: K) throws -> Date {
  let text = try c.decode(String.self, forKey: key)
  guard let date = parseRFC3339(text) else {
    throw DecodingError.dataCorruptedError(
      forKey: key, in: c, debugDescription: "'\(text)' is not an RFC 3339 date-time")
  }
  return date
}

/// RFC 3339 date-time (`2025-01-31T12:00:00Z`, optional fraction, `Z` or `±hh:mm`).
func parseRFC3339(_ text: String) -> Date? {
  let plain = ISO8601DateFormatter()
  plain.formatOptions = [.withInternetDateTime]
  if let d = plain.date(from: text) { return d }
  let fractional = ISO8601DateFormatter()
  fractional.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
  return fractional.date(from: text)
}

func formatRFC3339(_ date: Date) -> String {
  let f = ISO8601DateFormatter()
  f.formatOptions = [.withInternetDateTime]
  return f.string(from: date)
}

/// "field 'inputs[0].datatype': ..." from a DecodingError.
private func describe(_ error: DecodingError) -> String {
  func path(_ keys: [any CodingKey]) -> String {
    var out = ""
    for k in keys {
      if let i = k.intValue {
        out += "[\(i)]"
      } else {
        out += out.isEmpty ? k.stringValue : ".\(k.stringValue)"
      }
    }
    return out.isEmpty ? "(top level)" : out
  }
  switch error {
  case .keyNotFound(let key, let ctx):
    let p = path(ctx.codingPath + [key])
    return "missing field '\(p)'"
  case .typeMismatch(let type, let ctx):
    return "field '\(path(ctx.codingPath))': expected \(type)"
  case .valueNotFound(let type, let ctx):
    return "field '\(path(ctx.codingPath))': expected \(type), found null"
  case .dataCorrupted(let ctx):
    if ctx.debugDescription == "unknown field" { return "unknown field '\(path(ctx.codingPath))'" }
    return "field '\(path(ctx.codingPath))': \(ctx.debugDescription)"
  @unknown default:
    return "\(error)"
  }
}
