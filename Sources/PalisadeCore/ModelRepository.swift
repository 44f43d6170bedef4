import Synchronization

/// Resolves a model name and version to a servable model and tracks readiness.
///
/// The repository owns no loading logic: loaders (signed bundles, tests) register models into it. Lookups are
/// lock-protected dictionary reads, cheap enough for every call.
public final class ModelRepository: Sendable {
  /// The lifecycle state of one model version.
  public enum State: String, Sendable, Equatable {
    case loading = "LOADING"
    case ready = "READY"
    case unavailable = "UNAVAILABLE"
  }

  /// One row of ``index()``.
  public struct IndexEntry: Sendable, Equatable {
    public var name: String
    public var version: String
    public var state: State
    public var reason: String
  }

  private struct Entry: Sendable {
    var model: (any ServableModel)?
    var state: State
    var reason: String
  }

  private let entries = Mutex<[String: [String: Entry]]>([:])
  private let required: Set<String>
  /// Told of every model version that leaves the repository (see ``onRetire(_:)``).
  private let retireObservers = Mutex<[@Sendable ([any ServableModel]) -> Void]>([])

  /// Creates a repository. The server is ready only once every name in `required` has a ready version.
  public init(required: Set<String> = []) {
    self.required = required
  }

  /// Adds or replaces a model version; it takes traffic once its state is ``State/ready``. A replaced model is
  /// retired (``onRetire(_:)``).
  public func register(_ model: any ServableModel, state: State = .ready) {
    let d = model.descriptor
    let replaced = entries.withLock { all -> (any ServableModel)? in
      let old = all[d.name]?[d.version]?.model
      all[d.name, default: [:]][d.version] = Entry(model: model, state: state, reason: "")
      return old
    }
    if let replaced { retire([replaced]) }
  }

  /// Calls `observer` with the model versions that leave the repository (removed, or replaced by a new load of the
  /// same version), after they left: state kept per version elsewhere (queues, breakers, screening monitors,
  /// statistics) is released there, or the memory of every version ever loaded would stay. Calls that resolved a
  /// retired model before it left still finish on it.
  public func onRetire(_ observer: @escaping @Sendable ([any ServableModel]) -> Void) {
    retireObservers.withLock { $0.append(observer) }
  }

  /// Whether `descriptor`'s version (the same bundle, by its digest) is still in the repository. Caches that made
  /// an entry for a model check this afterwards: a call that resolved a version just before it was removed must
  /// not leave state behind for it.
  public func holds(_ descriptor: ModelDescriptor) -> Bool {
    entries.withLock { all in
      guard let model = all[descriptor.name]?[descriptor.version]?.model else { return false }
      return model.descriptor.properties["bundle_digest"] == descriptor.properties["bundle_digest"]
    }
  }

  private func retire(_ models: [any ServableModel]) {
    guard !models.isEmpty else { return }
    for observer in retireObservers.withLock({ $0 }) { observer(models) }
  }

  /// Marks a version (`loading` before it exists, `unavailable` with a reason when it fails).
  public func setState(name: String, version: String, _ state: State, reason: String = "") {
    entries.withLock { all in
      var entry = all[name]?[version] ?? Entry(model: nil, state: state, reason: reason)
      entry.state = state
      entry.reason = reason
      all[name, default: [:]][version] = entry
    }
  }

  /// Removes a version; `version: nil` removes every version of `name`. Returns whether anything was removed.
  @discardableResult
  public func remove(name: String, version: String? = nil) -> Bool {
    let (found, models) = entries.withLock { all -> (Bool, [any ServableModel]) in
      guard let versions = all[name] else { return (false, []) }
      if let version {
        let removed = all[name]?.removeValue(forKey: version)
        if all[name]?.isEmpty == true { all[name] = nil }
        return (removed != nil, removed?.model.map { [$0] } ?? [])
      }
      all[name] = nil
      return (true, versions.values.compactMap(\.model))
    }
    retire(models)
    return found
  }

  /// The model to serve for `name` and `version` (empty `version`: the highest ready version).
  public func resolve(name: String, version: String) throws(PalisadeError) -> any ServableModel {
    guard !name.isEmpty else { throw PalisadeError(.invalidArgument, "model name is required") }
    let result: Result<any ServableModel, PalisadeError> = entries.withLock { all in
      guard let versions = all[name] else {
        return .failure(PalisadeError(.notFound, "unknown model '\(name.sanitizedForMessage)'"))
      }
      if version.isEmpty {
        guard let (_, entry) = Self.latestReady(versions), let model = entry.model else {
          return .failure(PalisadeError(.unavailable, "model '\(name.sanitizedForMessage)' has no ready version"))
        }
        return .success(model)
      }
      guard let entry = versions[version] else {
        return .failure(
          PalisadeError(
            .notFound, "unknown version '\(version.sanitizedForMessage)' of model '\(name.sanitizedForMessage)'"))
      }
      guard entry.state == .ready, let model = entry.model else {
        return .failure(
          PalisadeError(
            .unavailable, "model '\(name.sanitizedForMessage)' version \(version.sanitizedForMessage) is not ready"))
      }
      return .success(model)
    }
    return try result.get()
  }

  /// Whether `name` (at `version`, or any version when empty) is ready. Unknown models are not ready.
  public func isReady(name: String, version: String) -> Bool {
    entries.withLock { all in
      guard let versions = all[name] else { return false }
      if version.isEmpty { return Self.latestReady(versions) != nil }
      return versions[version]?.state == .ready
    }
  }

  /// Every known version of `name`, highest first.
  public func versions(of name: String) -> [String] {
    entries.withLock { all in (all[name].map { Array($0.keys) } ?? []).sorted(by: Self.versionOrder).reversed() }
  }

  /// True when every required model has a ready version and no version is still loading.
  public var isServerReady: Bool {
    entries.withLock { all in
      for name in required where all[name].flatMap(Self.latestReady) == nil { return false }
      return !all.values.contains { $0.values.contains { $0.state == .loading } }
    }
  }

  /// Names of required models that are not ready, for `/readyz`.
  public var missingRequired: [String] {
    entries.withLock { all in required.filter { all[$0].flatMap(Self.latestReady) == nil }.sorted() }
  }

  /// Every version of every model with its state, sorted by name and version.
  public func index() -> [IndexEntry] {
    entries.withLock { all in
      all.flatMap { name, versions in
        versions.map { IndexEntry(name: name, version: $0.key, state: $0.value.state, reason: $0.value.reason) }
      }
    }.sorted { ($0.name, $0.version) < ($1.name, $1.version) }
  }

  private static func latestReady(_ versions: [String: Entry]) -> (String, Entry)? {
    versions.filter { $0.value.state == .ready && $0.value.model != nil }
      .max { versionOrder($0.key, $1.key) }
      .map { ($0.key, $0.value) }
  }

  /// Numeric versions compare as numbers and sort above non-numeric ones.
  static func versionOrder(_ a: String, _ b: String) -> Bool {
    switch (Int64(a), Int64(b)) {
    case let (x?, y?): x < y
    case (nil, _?): true
    case (_?, nil): false
    case (nil, nil): a < b
    }
  }
}
