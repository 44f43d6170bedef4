import Foundation
public import Logging
public import PalisadeBundle
public import PalisadeCore
import Synchronization

/// Loads signed bundles into the ``ModelRepository``: verify (signature, every file digest, trust rule for the
/// model name), check the manifest (name, version, expiry, rollback), load with the runtime for the model file,
/// warm up, then take traffic and retire older versions. Nothing of a bundle is parsed before it verified.
///
/// Layout, one directory per model name and one per version (as in Triton's model repository):
/// `<dir>/<name>/<version>/` holding the bundle files and `model.sig`, or `<dir>/<name>/<version>.tar.zst`.
public final class BundleLoader: Sendable {
  public struct Settings: Sendable {
    public var directories: [String]
    public var trust: TrustPolicy
    public var stateFile: String
    /// Parent of the per-load unpack directories (each made exclusively, mode 0700, removed after the load).
    public var unpackDirectory: String
    public var unpackLimits: UnpackLimits
    public init(
      directories: [String], trust: TrustPolicy, stateFile: String, unpackDirectory: String,
      unpackLimits: UnpackLimits = UnpackLimits()
    ) {
      self.directories = directories
      self.trust = trust
      self.stateFile = stateFile
      self.unpackDirectory = unpackDirectory
      self.unpackLimits = unpackLimits
    }
  }

  /// One bundle found on disk.
  public struct Candidate: Sendable, Equatable {
    public var name: String
    public var version: Int
    public var path: String
    public var packed: Bool
  }

  let settings: Settings
  let runtimes: [any ModelRuntime]
  let repository: ModelRepository
  let accepted: AcceptedVersions
  let logger: Logger
  let auditor: Auditor?
  let metrics: ServerMetrics?
  /// Keeps the verified files read-only in memory and re-hashes them (nil: off).
  public let integrity: IntegrityMonitor?
  /// Test hook: runs with the bundle directory after it verified and before the runtime loads the model (where a
  /// file swapped on disk would once have reached the runtime).
  let afterVerification: (@Sendable (String) async throws -> Void)?
  private let loading = Mutex<Set<String>>([])

  public init(
    settings: Settings, runtimes: [any ModelRuntime], repository: ModelRepository, logger: Logger,
    auditor: Auditor? = nil, metrics: ServerMetrics? = nil, integrity: IntegrityMonitor? = nil,
    afterVerificationForTesting: (@Sendable (String) async throws -> Void)? = nil
  ) throws {
    self.auditor = auditor
    self.metrics = metrics
    self.integrity = integrity
    self.afterVerification = afterVerificationForTesting
    self.settings = settings
    self.runtimes = runtimes
    self.repository = repository
    self.logger = logger
    do {
      try FileManager.default.createDirectory(
        atPath: URL(fileURLWithPath: settings.stateFile).deletingLastPathComponent().path,
        withIntermediateDirectories: true)
    } catch {
      throw PalisadeError(.failedPrecondition, "cannot create the directory of models.state_file \(settings.stateFile)")
    }
    self.accepted = try AcceptedVersions(path: settings.stateFile)
    let removed = Self.removeStaleUnpackDirectories(in: settings.unpackDirectory)
    if removed > 0 {
      logger.notice(
        "removed unpack directories left by a server that is gone",
        metadata: ["count": "\(removed)", "directory": "\(settings.unpackDirectory)"])
    }
  }

  /// Names of the per-load unpack directories: `palisade-unpack-<pid>-<instance>-<name>-<version>-<uuid>`.
  static let unpackPrefix = "palisade-unpack-"

  /// Tells this process's unpack directories from those of an earlier process with the same pid (a container's
  /// server is often pid 1 every time): random per process.
  static let processInstance = String(UInt32.random(in: 1...UInt32.max), radix: 16)

  /// Removes the unpack directories of processes that are gone (a server killed during an unpack; each load
  /// unpacks into a new directory, so such a directory is never read again) and returns how many: a pid that does
  /// not run, or this process's pid with another process's instance. Directories of this process (another loader
  /// in it may be unpacking right now) and of running processes stay. Only real directories (not symbolic links)
  /// owned by this user, with the prefix, are touched: the parent may be a shared /tmp.
  static func removeStaleUnpackDirectories(in parent: String) -> Int {
    guard let entries = try? FileManager.default.contentsOfDirectory(atPath: parent) else { return 0 }
    var removed = 0
    for entry in entries where entry.hasPrefix(unpackPrefix) {
      let rest = entry.dropFirst(unpackPrefix.count)
      guard let dash = rest.firstIndex(of: "-"), let pid = Int32(rest[..<dash]), pid > 0 else { continue }
      let instance = rest[rest.index(after: dash)...].prefix { $0 != "-" }
      let gone = pid == getpid() ? instance != processInstance : (kill(pid, 0) == -1 && errno == ESRCH)
      let path = "\(parent)/\(entry)"
      var info = stat()
      guard gone, lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR, info.st_uid == geteuid() else { continue }
      if (try? FileManager.default.removeItem(atPath: path)) != nil { removed += 1 }
    }
    return removed
  }

  /// Every bundle under the configured directories (directories that cannot be read are logged and skipped).
  public func discover() -> [Candidate] {
    var out: [Candidate] = []
    for dir in settings.directories {
      let names: [String]
      switch Self.list(dir) {
      case .success(let n): names = n
      case .failure(let e):
        logger.error("model directory not readable", metadata: ["path": "\(dir)", "error": "\(e.message)"])
        continue
      }
      for name in names.sorted() where !name.hasPrefix(".") {
        switch candidates(in: dir, name: name) {
        case .success(let found): out += found
        case .failure(let e):
          logger.error("model directory not readable", metadata: ["path": "\(dir)/\(name)", "error": "\(e.message)"])
        }
      }
    }
    return out.sorted { ($0.name, $0.version) < ($1.name, $1.version) }
  }

  /// The bundles of `name` below `dir`; an empty list when `dir/name` does not exist.
  private func candidates(in dir: String, name: String) -> Result<[Candidate], ListingError> {
    let modelDir = "\(dir)/\(name)"
    let entries: [String]
    switch Self.list(modelDir) {
    case .success(let e): entries = e
    case .failure(let e) where e.errno == ENOENT: return .success([])
    case .failure(let e): return .failure(e)
    }
    var out: [Candidate] = []
    for entry in entries {
      if let v = Int(entry), v > 0 {
        out.append(Candidate(name: name, version: v, path: "\(modelDir)/\(entry)", packed: false))
      } else if entry.hasSuffix(".tar.zst"), let v = Int(entry.dropLast(8)), v > 0 {
        out.append(Candidate(name: name, version: v, path: "\(modelDir)/\(entry)", packed: true))
      }
    }
    return .success(out)
  }

  /// A directory that could not be listed, and why (errno).
  struct ListingError: Error {
    var errno: Int32
    var message: String { String(cString: strerror(errno)) }
  }

  /// The names in a directory, or the errno that stopped the listing (FileManager's `try?` would turn an
  /// unreadable directory into an empty one).
  static func list(_ path: String) -> Result<[String], ListingError> {
    guard let d = opendir(path) else { return .failure(ListingError(errno: errno)) }
    defer { closedir(d) }
    var names: [String] = []
    errno = 0
    while let entry = readdir(d) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
      }
      if name != "." && name != ".." { names.append(name) }
    }
    if errno != 0 { return .failure(ListingError(errno: errno)) }
    return .success(names)
  }

  /// Loads the newest bundle of every model at start; a bad bundle is reported (and shown in RepositoryIndex) and
  /// the next older one is tried, down to the version accepted last (anti-rollback refuses anything older), so that
  /// a half-copied new version does not leave the model unserved when the accepted one is still on disk.
  /// A model in `below` loads its newest bundle below the given version instead (the stable version of a rollout
  /// planned in the config, whose candidate the rollout loads), unless that candidate was accepted already (a
  /// promoted rollout still in the config: anti-rollback would refuse every version below it).
  public func loadAll(below: [String: Int] = [:]) async {
    let byName = Dictionary(grouping: discover(), by: \.name)
    for (name, found) in byName.sorted(by: { $0.key < $1.key }) {
      let floor = accepted.acceptedVersion(of: name) ?? 0
      let limit = below[name].flatMap { candidate in floor < candidate ? candidate : nil }
      let newestFirst = found.filter { c in limit.map { c.version < $0 } ?? true }.sorted { $0.version > $1.version }
      var refused: [Int] = []
      for candidate in newestFirst {
        do {
          // Nothing else of this model is loaded yet; the refused newer versions stay listed with their reasons.
          try await load(candidate, retireOthers: false, record: true)
          if !refused.isEmpty {
            logger.warning(
              "model served from an older bundle: the newer ones were refused",
              metadata: [
                "model": "\(name)", "version": "\(candidate.version)",
                "refused": "\(refused.map(String.init).joined(separator: ","))",
              ])
          }
          break
        } catch {
          metrics?.recordModelLoad(result: "refused")
          logger.error(
            "bundle refused",
            metadata: ["model": "\(name)", "version": "\(candidate.version)", "reason": "\(error.message)"])
          refused.append(candidate.version)
          // Older ones than the accepted version would be refused too.
          if candidate.version <= floor { break }
        }
      }
    }
  }

  /// Loads the newest bundle for `name` (RepositoryModelLoad). Whatever refuses it (the model's directory gone
  /// or unreadable, a bundle that does not verify) leaves the version being served as it is, and is reported:
  /// the error names the reason, the log and `palisade_model_loads_total{result="refused"}` record it.
  public func load(name: String) async throws(PalisadeError) {
    do throws(PalisadeError) {
      var found: [Candidate] = []
      for dir in settings.directories {
        switch candidates(in: dir, name: name) {
        case .success(let c): found += c
        case .failure(let e):
          logger.error("model directory not readable", metadata: ["path": "\(dir)/\(name)", "error": "\(e.message)"])
          throw PalisadeError(
            .failedPrecondition, "the directory of model '\(name.sanitizedForMessage)' cannot be read: \(e.message)")
        }
      }
      guard let candidate = found.max(by: { $0.version < $1.version }) else {
        throw PalisadeError(.notFound, "no bundle for model '\(name.sanitizedForMessage)' in the model directories")
      }
      try await load(candidate)
    } catch {
      let served = repository.versions(of: name).filter { repository.isReady(name: name, version: $0) }
      logger.error(
        "model load refused",
        metadata: [
          "model": "\(name)", "reason": "\(error.message)", "still_serving": "\(served.joined(separator: ","))",
        ])
      metrics?.recordModelLoad(result: "refused")
      throw error
    }
  }

  /// The newest bundle version of `name` on disk, if any.
  public func newestVersion(of name: String) -> Int? {
    settings.directories.flatMap { dir in (try? candidates(in: dir, name: name).get()) ?? [] }.map(\.version).max()
  }

  /// Loads version `version` of `name` as a rollout candidate: verified like any load (the anti-rollback check
  /// included), but it retires no other version and is not recorded as accepted until ``accept(name:version:)``
  /// (its promotion), so that a rolled-back candidate does not lock the stable version out at the next start.
  public func loadCandidate(name: String, version: Int) async throws(PalisadeError) {
    let found = settings.directories.flatMap { dir in (try? candidates(in: dir, name: name).get()) ?? [] }
    guard let candidate = found.first(where: { $0.version == version }) else {
      throw PalisadeError(
        .notFound, "no bundle for version \(version) of model '\(name.sanitizedForMessage)' in the model directories")
    }
    do throws(PalisadeError) { try await load(candidate, retireOthers: false, record: false) } catch {
      metrics?.recordModelLoad(result: "refused")
      logger.error(
        "rollout candidate refused",
        metadata: ["model": "\(name)", "version": "\(version)", "reason": "\(error.message)"])
      throw error
    }
  }

  /// Records a promoted candidate as accepted (anti-rollback).
  public func accept(name: String, version: Int) throws(PalisadeError) {
    do throws(BundleError) { try accepted.checkAndRecord(name: name, version: version) } catch {
      throw PalisadeError(
        .failedPrecondition, "version \(version) of '\(name.sanitizedForMessage)' not accepted: \(error.reason)")
    }
  }

  /// Verifies, loads, warms and installs one bundle, then retires older versions of the model.
  public func load(_ candidate: Candidate) async throws(PalisadeError) {
    try await load(candidate, retireOthers: true, record: true)
  }

  func load(_ candidate: Candidate, retireOthers: Bool, record: Bool) async throws(PalisadeError) {
    let name = candidate.name
    let version = String(candidate.version)
    guard loading.withLock({ $0.insert(name).inserted }) else {
      throw PalisadeError(.unavailable, "model '\(name.sanitizedForMessage)' is already being loaded")
    }
    defer { _ = loading.withLock { $0.remove(name) } }
    let wasReady = repository.isReady(name: name, version: version)
    if !wasReady { repository.setState(name: name, version: version, .loading) }
    do {
      let model = try await verifyAndBuild(candidate, record: record)
      repository.register(model)
      for old in repository.versions(of: name) where old != version && retireOthers {
        repository.remove(name: name, version: old)  // in-flight calls hold their model and finish on it
      }
      metrics?.recordModelLoad(result: "loaded")
      logger.notice(
        "model loaded",
        metadata: [
          "model": "\(name)", "version": "\(version)", "signer": "\(model.descriptor.properties["signer"] ?? "")",
        ])
      await auditor?.event(
        .modelLoad, model: name, version: version, manifestDigest: model.descriptor.properties["manifest_digest"],
        status: "OK",
        details: [
          "signer": model.descriptor.properties["signer"] ?? "",
          "bundle_sha256": model.descriptor.properties["bundle_digest"] ?? "",
        ])
    } catch let error as PalisadeError {
      if !wasReady { repository.setState(name: name, version: version, .unavailable, reason: error.message) }
      await auditor?.event(
        .modelRefused, model: name, version: version, status: "FAILED_PRECONDITION", reason: error.message)
      throw error
    } catch {
      let e = PalisadeError(.internal, "loading failed", detail: "\(error)")
      if !wasReady { repository.setState(name: name, version: version, .unavailable, reason: e.message) }
      await auditor?.event(.modelRefused, model: name, version: version, status: "INTERNAL", reason: "\(error)")
      throw e
    }
  }

  private func verifyAndBuild(_ candidate: Candidate, record: Bool) async throws -> any ServableModel {
    func refuse(_ error: BundleError) -> PalisadeError {
      PalisadeError(.failedPrecondition, "bundle \(candidate.name)/\(candidate.version) refused: \(error.reason)")
    }
    var directory = candidate.path
    var unpacked: String?
    if candidate.packed {
      // The archive's model.sig is verified before anything else is written, and only signed files are unpacked.
      let target =
        "\(settings.unpackDirectory)/\(Self.unpackPrefix)\(getpid())-\(Self.processInstance)-\(candidate.name)-\(candidate.version)-\(UUID().uuidString)"
      do {
        directory = try await BundleUnpacker.unpack(
          archive: candidate.path, into: target, trust: settings.trust, modelName: candidate.name, now: Date(),
          limits: settings.unpackLimits
        ).directory
      } catch {
        throw refuse(error)
      }
      unpacked = directory
    }
    defer { if let unpacked { try? FileManager.default.removeItem(atPath: unpacked) } }
    let verified: VerifiedBundle
    let manifest: BundleManifest
    do throws(BundleError) {
      // Every signed file is read once, hashed while read, and kept (read-only) in memory: the runtime gets these
      // bytes and nothing from disk, so a file replaced after verification never reaches it.
      verified = try await BundleVerifier.verify(
        directory: directory, trust: settings.trust, modelName: candidate.name, now: Date(), keepContents: true)
      manifest = try verified.manifest(now: Date())
      guard manifest.version == candidate.version else {
        throw BundleError(
          .invalidManifest, "manifest version \(manifest.version) differs from the directory's \(candidate.version)")
      }
      try accepted.check(name: candidate.name, version: manifest.version)
    } catch {
      throw refuse(error)
    }
    let ext = URL(fileURLWithPath: manifest.modelFile).pathExtension.lowercased()
    guard let runtime = runtimes.first(where: { $0.fileExtensions.contains(ext) }) else {
      throw PalisadeError(.failedPrecondition, "no runtime loads '.\(ext)' model files")
    }
    try await afterVerification?(directory)
    var sealedFiles: [(file: VerifiedFile, bytes: SealedBytes)] = []
    for file in verified.files {
      guard let bytes = verified.contents(of: file.name) else {
        throw refuse(BundleError(.contentMismatch, "\(file.name): verified contents were not kept"))
      }
      sealedFiles.append((file, bytes))
    }
    let files = ModelFiles(
      modelFileName: manifest.modelFile,
      files: Dictionary(
        sealedFiles.map { ($0.file.name, VerifiedBytes($0.bytes) as any ModelFileBytes) },
        uniquingKeysWith: { a, _ in a }))
    let descriptor = ModelDescriptor(
      name: manifest.name, version: String(manifest.version), platform: ext,
      inputs: manifest.inputs.compactMap(Self.spec), outputs: manifest.outputs.compactMap(Self.spec),
      properties: [
        "signer": verified.signer.description, "bundle_digest": verified.rootDigest,
        "manifest_digest": verified.files.first { $0.name == bundleManifestFileName }?.sha256 ?? "",
        "expires": ISO8601DateFormatter().string(from: manifest.expires),
      ],
      contract: ModelContract(
        maxBatch: manifest.maxBatch,
        featureRanges: Dictionary(
          manifest.inputs.compactMap { t in
            t.featureRange.map { (t.name, ModelContract.FeatureRange(min: $0.min, max: $0.max)) }
          },
          uniquingKeysWith: { a, _ in a }),
        // Manifests have no way to allow NaN or infinities: signed models take finite inputs only.
        allowNonFinite: false, allowEmptyDimensions: manifest.allowEmptyDimensions ?? false),
      outputPolicy: OutputPolicy(
        topK: manifest.outputPolicy?.topK, roundDecimals: manifest.outputPolicy?.roundDecimals,
        labelOnly: manifest.outputPolicy?.labelOnly ?? false, padToBucketBytes: manifest.outputPolicy?.padToBucketBytes,
        labels: manifest.labels),
      screening: ScreeningProfile(
        references: Dictionary(
          manifest.inputs.compactMap { t in
            t.referenceStatistics.map {
              (
                t.name,
                ScreeningProfile.Reference(
                  mean: $0.mean, std: $0.std, covariance: $0.covariance, covarianceDiagonal: $0.covarianceDiagonal)
              )
            }
          }, uniquingKeysWith: { a, _ in a }),
        threshold: manifest.screeningPolicy?.oodThreshold,
        action: manifest.screeningPolicy?.action == .reject ? .reject : .flag))
    let model = try await runtime.load(files: files, descriptor: descriptor)
    try await Self.warmUp(model)
    do {
      if record {
        try accepted.checkAndRecord(name: candidate.name, version: manifest.version)
      } else {
        try accepted.check(name: candidate.name, version: manifest.version)
      }
    } catch {
      throw refuse(error)
    }
    // The same pages the runtime read, every signed file (model file and external data alike), re-hashed from now on.
    integrity?.track(
      model: candidate.name, version: String(manifest.version),
      files: sealedFiles.map {
        IntegrityMonitor.TrackedFile(name: $0.file.name, sha256: $0.file.sha256, bytes: $0.bytes)
      })
    return model
  }

  static func spec(_ t: BundleManifest.Tensor) -> TensorSpec? {
    DataType(rawValue: t.datatype.rawValue).map { TensorSpec(name: t.name, datatype: $0, shape: t.shape) }
  }

  /// Largest warm-up input (bytes per input): a model whose declared input is bigger is refused, not allocated.
  static let maxWarmUpBytes = 1 << 30

  /// One inference on zeros (variable dimensions as 1) before the model takes traffic.
  static func warmUp(_ model: any ServableModel) async throws {
    var inputs: [Tensor] = []
    for spec in model.descriptor.inputs {
      let shape = spec.shape.map { $0 < 0 ? 1 : $0 }
      // The shape is the manifest's (signed, but still checked): never multiply or allocate unchecked.
      guard let count = TensorShape.elementCount(shape),
        spec.datatype.elementSize == nil
          || (TensorShape.byteCount(elements: count, of: spec.datatype).map { $0 <= maxWarmUpBytes } ?? false),
        count <= maxWarmUpBytes
      else {
        throw PalisadeError(
          .failedPrecondition,
          "model '\(model.descriptor.name.sanitizedForMessage)': input '\(spec.name.sanitizedForMessage)' is too large to warm up (\(shape))"
        )
      }
      if let bytes = TensorShape.byteCount(elements: count, of: spec.datatype) {
        inputs.append(
          try Tensor(
            name: spec.name, datatype: spec.datatype, shape: shape, storage: .fixed([UInt8](repeating: 0, count: bytes))
          ))
      } else {
        inputs.append(
          try Tensor(
            name: spec.name, datatype: .bytes, shape: shape, storage: .bytes(Array(repeating: [], count: count))))
      }
    }
    _ = try await model.infer(InferenceRequest(inputs: inputs))
  }
}

/// A verified file's sealed pages as the runtime seam sees them.
struct VerifiedBytes: ModelFileBytes {
  let sealed: SealedBytes
  init(_ sealed: SealedBytes) { self.sealed = sealed }
  var count: Int { sealed.count }
  func withBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
    try sealed.withUnsafeBytes(body)
  }
}
