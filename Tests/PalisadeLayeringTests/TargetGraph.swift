import Foundation

/// The package's targets and the edges between them: the dependencies each declares in Package.swift (from
/// `swift package dump-package`) and the modules its sources import (read from the files, so that an import the
/// manifest does not declare counts too). Only edges between targets of this package are kept.
struct TargetGraph {
  /// Why one target reaches another directly.
  struct Edge: Equatable, CustomStringConvertible {
    var to: String
    /// "declared in Package.swift" or "imported at Sources/X/File.swift:3".
    var because: String
    var description: String { "\(to) (\(because))" }
  }

  /// Target name → its direct edges to other targets of the package.
  private(set) var edges: [String: [Edge]] = [:]

  /// The graph of the package at `root`, from the `dump-package` JSON `manifest`.
  init(root: URL, manifest: Data) throws {
    guard let object = try JSONSerialization.jsonObject(with: manifest) as? [String: Any],
      let targets = object["targets"] as? [[String: Any]]
    else { throw GraphError("dump-package output has no targets") }
    var names = Set<String>()
    var directories: [String: String] = [:]
    var declared: [String: [String]] = [:]
    for target in targets {
      guard let name = target["name"] as? String, let type = target["type"] as? String else {
        throw GraphError("a target without a name or type in dump-package output")
      }
      names.insert(name)
      // SwiftPM's defaults: Sources/<name>, Tests/<name> for test targets; `path` overrides.
      directories[name] = (target["path"] as? String) ?? (type == "test" ? "Tests/\(name)" : "Sources/\(name)")
      var deps: [String] = []
      for dependency in target["dependencies"] as? [[String: Any]] ?? [] {
        // `byName` and `target` dependencies name targets of this package (or, for byName, a product).
        for key in ["byName", "target"] {
          if let pair = dependency[key] as? [Any], let depName = pair.first as? String { deps.append(depName) }
        }
      }
      declared[name] = deps
    }
    for name in names {
      var list = (declared[name] ?? []).filter(names.contains).map {
        Edge(to: $0, because: "declared in Package.swift")
      }
      if let directory = directories[name] {
        for found in try Self.imports(under: root.appendingPathComponent(directory), relativeTo: root)
        where names.contains(found.module) && found.module != name {
          list.append(Edge(to: found.module, because: "imported at \(found.location)"))
        }
      }
      edges[name] = list
    }
  }

  var targets: Set<String> { Set(edges.keys) }

  /// Every target `start` reaches through declared dependencies or imports, each with one path that shows how
  /// (shortest first, so a message names the nearest cause).
  func reach(from start: String) -> [String: [Edge]] {
    var paths: [String: [Edge]] = [:]
    var queue = [start]
    var seen: Set<String> = [start]
    while !queue.isEmpty {
      let current = queue.removeFirst()
      for edge in edges[current] ?? [] where !seen.contains(edge.to) {
        seen.insert(edge.to)
        paths[edge.to] = (paths[current] ?? []) + [edge]
        queue.append(edge.to)
      }
    }
    return paths
  }

  /// The modules imported by the Swift files below `directory`, with file and line.
  static func imports(under directory: URL, relativeTo root: URL) throws -> [(module: String, location: String)] {
    guard FileManager.default.fileExists(atPath: directory.path) else { return [] }
    guard let walker = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: nil) else {
      throw GraphError("\(directory.path) cannot be listed")
    }
    var found: [(module: String, location: String)] = []
    let prefix = root.standardizedFileURL.path + "/"
    for case let file as URL in walker where file.pathExtension == "swift" {
      let text = try String(contentsOf: file, encoding: .utf8)
      let path = file.standardizedFileURL.path
      let shown = path.hasPrefix(prefix) ? String(path.dropFirst(prefix.count)) : path
      for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
        if let module = importedModule(String(line)) { found.append((module, "\(shown):\(index + 1)")) }
      }
    }
    return found.sorted { $0.location < $1.location }
  }

  /// The top-level module an `import` declaration on this line names, or nil when the line is not one.
  /// Accepts attributes (`@testable`, `@_exported`, `@preconcurrency`...), access levels (`public import`), and
  /// kinds (`import struct M.T`); leading `#if` indentation is allowed. Comments are not imports.
  static func importedModule(_ line: String) -> String? {
    var words = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
    if let comment = words.firstIndex(where: { $0.hasPrefix("//") || $0.hasPrefix("/*") }) {
      words = Array(words[..<comment])
    }
    let modifiers: Set<String> = ["public", "package", "internal", "fileprivate", "private", "open"]
    while let first = words.first, first.hasPrefix("@") || modifiers.contains(first) { words.removeFirst() }
    guard words.first == "import", words.count >= 2 else { return nil }
    let kinds: Set<String> = ["struct", "class", "enum", "protocol", "typealias", "func", "let", "var", "actor"]
    let path = kinds.contains(words[1]) && words.count >= 3 ? words[2] : words[1]
    guard let module = path.split(separator: ".").first, !module.isEmpty else { return nil }
    return String(module)
  }
}

/// The layering rules of docs/architecture.md, checked against a graph.
enum LayeringRules {
  /// Targets that must never reach the server: what a bundle publisher, an auditor, the sidecar or a client run
  /// must not drag the server into.
  static let belowTheServer = [
    "PalisadeRuntime", "PalisadeBundle", "PalisadeIdentity", "PalisadePolicy", "PalisadeAudit", "PalisadeEgress",
    "PalisadeClient", "PalisadeTools", "PalisadeScreening", "PalisadeSupport", "PalisadeTPM",
  ]

  /// Every broken rule, in words that name the path from the target to what it must not reach.
  static func violations(in graph: TargetGraph) -> [String] {
    var found: [String] = []
    // The kernels are standard library only: nothing of ours, so they can be benchmarked and reused alone.
    for (target, path) in graph.reach(from: "PalisadeKernels").sorted(by: { $0.key < $1.key }) {
      found.append("PalisadeKernels reaches \(target): \(render("PalisadeKernels", path))")
    }
    for target in belowTheServer where graph.targets.contains(target) {
      if let path = graph.reach(from: target)["PalisadeServer"] {
        found.append("\(target) reaches PalisadeServer: \(render(target, path))")
      }
    }
    // The server reaches models only through Core's `ModelRuntime` seam; `serve` hands it the ONNX runtime.
    if let path = graph.reach(from: "PalisadeServer")["PalisadeRuntime"] {
      found.append("PalisadeServer reaches PalisadeRuntime: \(render("PalisadeServer", path))")
    }
    return found
  }

  static func render(_ start: String, _ path: [TargetGraph.Edge]) -> String {
    ([start] + path.map(\.description)).joined(separator: " -> ")
  }
}

struct GraphError: Error, CustomStringConvertible {
  var description: String
  init(_ description: String) { self.description = description }
}
