import Foundation

/// Reads the bundles under the configured directories for what must never leave: the `canary_tokens` of each
/// `manifest.json` and the bytes of every other file (the model and its weights).
///
/// This is read-only fingerprinting, not loading: signatures are **not** verified here (the server does that before
/// serving). An unsigned or tampered bundle in these directories only adds fingerprints, which can only block more.
public enum BundleFingerprints {
  /// What was found.
  public struct Result {
    public var canaries: [Canary] = []
    public var weights: WeightIndex?
    public var bundles: [String] = []
    /// Packed bundles (`*.tar.zst`) found on the way: not read, so their weights and canaries are NOT fingerprinted.
    public var packed: [String] = []
  }

  public enum Failure: Error, CustomStringConvertible {
    case unreadable(String, String)
    case tooLarge(Int, Int)
    public var description: String {
      switch self {
      case .unreadable(let path, let why): "bundle file \(path) cannot be read: \(why)"
      case .tooLarge(let have, let limit):
        "bundle weight files total \(have) bytes, over inspection.weights.max_indexed_bytes (\(limit))"
      }
    }
  }

  /// Walks `directories` (at most three levels deep) for directories holding `manifest.json`.
  public static func load(directories: [String], settings: EgressConfig.Weights) throws -> Result {
    var result = Result()
    var builder = WeightIndex.Builder(
      window: settings.windowBytes, stride: settings.strideBytes, minDistinctBytes: settings.minDistinctBytes)
    let fm = FileManager.default
    var bundleDirs: [URL] = []
    func walk(_ url: URL, depth: Int) {
      if fm.fileExists(atPath: url.appendingPathComponent("manifest.json").path) {
        bundleDirs.append(url)
        return
      }
      guard depth < 3, let items = try? fm.contentsOfDirectory(at: url, includingPropertiesForKeys: [.isDirectoryKey])
      else { return }
      for item in items.sorted(by: { $0.path < $1.path }) {
        if (try? item.resourceValues(forKeys: [.isDirectoryKey]).isDirectory) == true {
          walk(item, depth: depth + 1)
        } else if item.lastPathComponent.hasSuffix(".tar.zst") {
          result.packed.append(item.path)
        }
      }
    }
    for d in directories {
      var isDir: ObjCBool = false
      guard fm.fileExists(atPath: d, isDirectory: &isDir), isDir.boolValue else {
        throw Failure.unreadable(d, "not a directory")
      }
      walk(URL(fileURLWithPath: d), depth: 0)
    }
    for dir in bundleDirs {
      let manifestPath = dir.appendingPathComponent("manifest.json").path
      let label: String
      do {
        let data = try Data(contentsOf: URL(fileURLWithPath: manifestPath))
        guard let json = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
          throw Failure.unreadable(manifestPath, "not a JSON object")
        }
        let name = json["name"] as? String ?? dir.lastPathComponent
        let version = (json["version"] as? Int).map { " v\($0)" } ?? ""
        label = "bundle \(name)\(version)"
        for token in json["canary_tokens"] as? [String] ?? [] where token.utf8.count >= 8 {
          result.canaries.append(Canary(token, source: label))
        }
      } catch let f as Failure {
        throw f
      } catch {
        throw Failure.unreadable(manifestPath, "\(error)")
      }
      result.bundles.append(label)
      guard settings.enabled else { continue }
      let files = (fm.enumerator(at: dir, includingPropertiesForKeys: [.isRegularFileKey])?.allObjects as? [URL]) ?? []
      for file in files.sorted(by: { $0.path < $1.path }) {
        let name = file.lastPathComponent
        guard name != "manifest.json", name != "model.sig",
          (try? file.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true
        else { continue }
        let data: Data
        do { data = try Data(contentsOf: file, options: .alwaysMapped) } catch {
          throw Failure.unreadable(file.path, "\(error)")
        }
        if builder.indexedBytes + data.count > settings.maxIndexedBytes {
          throw Failure.tooLarge(builder.indexedBytes + data.count, settings.maxIndexedBytes)
        }
        let relative = String(file.path.dropFirst(dir.path.count + 1))
        data.withUnsafeBytes { builder.add($0, source: "\(label) (\(relative))") }
      }
    }
    if settings.enabled { result.weights = builder.build() }
    return result
  }
}
