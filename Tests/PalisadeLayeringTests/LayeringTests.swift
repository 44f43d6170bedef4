import Foundation
import Testing

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent()

/// The target layering of docs/architecture.md, enforced: the kernels import nothing of ours, and the runtime,
/// bundle, identity, policy, audit and egress targets (and the client, the offline tools and the small shared
/// targets) never reach the server, neither by a declared dependency nor by an import, directly or through another
/// target. `make test` also builds with `--explicit-target-dependency-import-check error`, which refuses an import
/// of a target outside the declared dependency closure; this test is stricter, since a path through a declared
/// dependency is exactly what it must catch.
@Suite struct LayeringTests {
  /// `swift package dump-package` for the package at `root` (the manifest as SwiftPM reads it).
  static func dumpPackage(_ root: URL) throws -> Data {
    let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("layering-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: scratch) }
    let out = scratch.appendingPathComponent("out.json")
    let err = scratch.appendingPathComponent("err.txt")
    _ = FileManager.default.createFile(atPath: out.path, contents: nil)
    _ = FileManager.default.createFile(atPath: err.path, contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    // --ignore-lock: `swift test` holds the package's build lock while this runs.
    process.arguments = ["swift", "package", "--ignore-lock", "--package-path", root.path, "dump-package"]
    process.standardOutput = try FileHandle(forWritingTo: out)
    process.standardError = try FileHandle(forWritingTo: err)
    try process.run()
    process.waitUntilExit()
    let errors = (try? String(contentsOf: err, encoding: .utf8)) ?? ""
    guard process.terminationStatus == 0 else {
      throw GraphError("swift package dump-package exited \(process.terminationStatus): \(errors)")
    }
    return try Data(contentsOf: out)
  }

  @Test func theTargetGraphKeepsItsLayers() throws {
    let graph = try TargetGraph(root: repositoryRoot, manifest: try Self.dumpPackage(repositoryRoot))
    // The graph was read at all: the rules would pass vacuously on an empty one.
    for target in ["PalisadeKernels", "PalisadeServer", "PalisadeTools"] + LayeringRules.belowTheServer {
      #expect(graph.targets.contains(target), "\(target) is not a target of the package any more: update the rules")
    }
    #expect(graph.reach(from: "PalisadeCLI")["PalisadeServer"] != nil, "the graph has the edges it should")
    let violations = LayeringRules.violations(in: graph)
    #expect(violations.isEmpty, "\(violations.joined(separator: "\n"))")
  }

  /// The check on a deliberately broken package: the kernels import Core, and the bundle target imports a helper
  /// that declares the server. Both are caught, each with the path that breaks the rule.
  @Test func aBrokenGraphIsRefusedWithThePath() throws {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("layering-\(UUID().uuidString)")
    defer { try? FileManager.default.removeItem(at: root) }
    func write(_ path: String, _ text: String) throws {
      let url = root.appendingPathComponent(path)
      try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
      try Data(text.utf8).write(to: url)
    }
    try write(
      "Sources/PalisadeKernels/Gemm.swift", "// import PalisadeServer (a comment, not an import)\nimport PalisadeCore\n"
    )
    try write("Sources/PalisadeCore/Tensor.swift", "public struct Tensor {}\n")
    try write(
      "Sources/PalisadeBundle/Sign.swift",
      "import Foundation\n#if os(Linux)\n  @testable import PalisadeHelper\n#endif\n")
    try write("Sources/PalisadeHelper/Helper.swift", "public import PalisadeServer\n")
    try write("Sources/PalisadeServer/Server.swift", "import PalisadeCore\n")
    try write("Sources/PalisadeAudit/Log.swift", "import PalisadeCore\n")
    // As dump-package writes it; the helper also declares the server (the import above would do alone).
    let manifest = """
      {"targets": [
        {"name": "PalisadeKernels", "type": "regular", "dependencies": []},
        {"name": "PalisadeCore", "type": "regular", "dependencies": []},
        {"name": "PalisadeBundle", "type": "regular", "dependencies": [{"product": ["Crypto", "swift-crypto", null, null]}]},
        {"name": "PalisadeHelper", "type": "regular", "dependencies": [{"byName": ["PalisadeServer", null]}]},
        {"name": "PalisadeServer", "type": "regular", "dependencies": [{"target": ["PalisadeCore", null]}]},
        {"name": "PalisadeAudit", "type": "regular", "dependencies": [{"byName": ["PalisadeCore", null]}]}
      ]}
      """
    let graph = try TargetGraph(root: root, manifest: Data(manifest.utf8))
    let violations = LayeringRules.violations(in: graph)
    #expect(violations.count == 2, "\(violations)")
    #expect(
      violations.contains(
        "PalisadeKernels reaches PalisadeCore: PalisadeKernels -> PalisadeCore (imported at Sources/PalisadeKernels/Gemm.swift:2)"
      ),
      "\(violations)")
    #expect(
      violations.contains {
        $0.hasPrefix(
          "PalisadeBundle reaches PalisadeServer: PalisadeBundle -> PalisadeHelper (imported at Sources/PalisadeBundle/Sign.swift:3) -> PalisadeServer"
        )
      }, "\(violations)")
    #expect(graph.reach(from: "PalisadeAudit")["PalisadeServer"] == nil, "audit reaches only core")
  }

  @Test func importLinesAreReadAsTheCompilerReadsThem() {
    let cases: [(String, String?)] = [
      ("import PalisadeCore", "PalisadeCore"),
      ("public import PalisadeCore", "PalisadeCore"),
      ("package import PalisadeCore", "PalisadeCore"),
      ("@testable import PalisadeServer", "PalisadeServer"),
      ("@_exported public import PalisadeServer", "PalisadeServer"),
      ("@preconcurrency internal import PalisadeServer", "PalisadeServer"),
      ("import struct PalisadeCore.Tensor", "PalisadeCore"),
      ("  import PalisadeServer  // indented inside #if", "PalisadeServer"),
      ("// import PalisadeServer", nil),
      ("/// Call `import PalisadeServer` from...", nil),
      ("let imported = 1", nil),
      ("import", nil),
    ]
    for (line, module) in cases {
      #expect(TargetGraph.importedModule(line) == module, "\(line)")
    }
  }
}
