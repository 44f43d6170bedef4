import Foundation
import GRPCCore
import PalisadeBundle
import PalisadeProto
import PalisadeTestSupport
import Synchronization
import Testing

/// Signed bundles through the server: verified at start and on RepositoryModelLoad, hot-swapped under load.
@Suite struct BundleServingTests {
  static let policy =
    TestServer.allowAllPolicy + """

        - name: ops
          principals: [{spiffe: "spiffe://palisade.test/sa/ops"}]
          rpcs: [RepositoryModelLoad, RepositoryModelUnload]
      """

  static func start(_ pki: TestPKI, _ factory: TestBundleFactory, root: String) async throws -> TestServer {
    let keyPath = try pki.write("publisher.pub.pem", factory.publicKeyPEM)
    return try await TestServer.start(pki: pki, models: [], policy: Self.policy) {
      $0.models.directories = [root]
      $0.models.stateFile = pki.path("state/accepted.json")
      $0.models.trust = [.init(models: "simple*", publicKeys: [keyPath])]
    }
  }

  func waitReady(_ server: TestServer, _ name: String, version: String = "") async throws {
    for _ in 0..<200 where !server.runtime.repository.isReady(name: name, version: version) {
      try await Task.sleep(for: .milliseconds(50))
    }
    #expect(server.runtime.repository.isReady(name: name, version: version), "\(name) \(version) ready")
  }

  @Test func badBundlesAreReportedAndSkippedGoodOnesServe() async throws {
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    let root = pki.path("models")
    try await factory.make(root: root, name: "simple", version: 1)
    let tampered = try await factory.make(root: root, name: "simple-tampered", version: 1)
    try Data("{\"kind\": \"slow\"}".utf8).write(to: URL(fileURLWithPath: "\(tampered)/model.testmodel"))
    try await factory.make(root: root, name: "simple-expired", version: 1, expires: Date().addingTimeInterval(-10))
    try await factory.make(root: root, name: "simple-stranger", version: 1, signer: .init())
    try await factory.make(root: root, name: "untrusted-name", version: 1)
    let server = try await Self.start(pki, factory, root: root)
    try await waitReady(server, "simple")
    let client = try goodClient(server)
    let response = try await withClient(server, client) { try await $0.modelInfer(simpleRequest(raw: true)) }
    #expect(response.modelVersion == "1")
    let index = try await withClient(server, client) { try await $0.repositoryIndex(.init()) }
    let byName = Dictionary(uniqueKeysWithValues: index.models.map { ($0.name, $0) })
    #expect(byName["simple"]?.state == "READY")
    #expect(
      byName["simple-tampered"]?.reason.contains("model.testmodel") == true,
      "\(byName["simple-tampered"]?.reason ?? "")")
    #expect(byName["simple-expired"]?.reason.contains("expired") == true, "\(byName["simple-expired"]?.reason ?? "")")
    #expect(byName["simple-stranger"]?.state == "UNAVAILABLE")
    #expect(
      byName["untrusted-name"]?.reason.contains("untrusted-name") == true, "\(byName["untrusted-name"]?.reason ?? "")")
    for name in ["simple-tampered", "simple-expired", "simple-stranger", "untrusted-name"] {
      #expect(!server.runtime.repository.isReady(name: name, version: ""))
    }
    let meta = try await withClient(server, client) { try await $0.modelMetadata(.with { $0.name = "simple" }) }
    #expect(meta.properties["signer"]?.contains("P-256") == true)
    try await server.stop()
  }

  @Test func aRefusedNewVersionAtStartFallsBackToTheAcceptedOneNeverBelowIt() async throws {
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    let root = pki.path("models")
    try await factory.make(root: root, version: 1)
    try await factory.make(root: root, version: 2)
    // Version 3 half-copied (a file cut short): refused; version 2 is served instead, version 1 is not touched.
    let three = try await factory.make(root: root, version: 3)
    try Data("{\"ki".utf8).write(to: URL(fileURLWithPath: "\(three)/model.testmodel"))
    var server = try await Self.start(pki, factory, root: root)
    try await waitReady(server, "simple")
    let client = try goodClient(server)
    #expect(
      try await withClient(server, client) { try await $0.modelInfer(simpleRequest(raw: true)) }.modelVersion == "2")
    var index = try await withClient(server, client) { try await $0.repositoryIndex(.init()) }.models
    #expect(index.contains { $0.version == "2" && $0.state == "READY" }, "\(index)")
    #expect(
      index.contains { $0.version == "3" && $0.state == "UNAVAILABLE" && $0.reason.contains("model.testmodel") },
      "\(index)")
    #expect(!index.contains { $0.version == "1" }, "\(index)")
    let state = try String(contentsOfFile: pki.path("state/accepted.json"), encoding: .utf8)
    #expect(state.contains("\"simple\"") && state.contains("2"), "\(state)")
    try await server.stop()

    // Version 2, accepted, now refused too: version 1 is older than the accepted one and is never loaded.
    try FileManager.default.removeItem(atPath: three)
    try Data("{\"ki".utf8).write(to: URL(fileURLWithPath: "\(root)/simple/2/model.testmodel"))
    server = try await Self.start(pki, factory, root: root)
    try await Task.sleep(for: .milliseconds(300))
    index = try await withClient(server, client) { try await $0.repositoryIndex(.init()) }.models
    #expect(index.contains { $0.version == "2" && $0.state == "UNAVAILABLE" }, "\(index)")
    #expect(!index.contains { $0.version == "1" }, "\(index)")
    #expect(!server.runtime.repository.isReady(name: "simple", version: ""))
    let refused = await rpcError {
      _ = try await withClient(server, client) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    #expect(refused?.code == .unavailable, "\(String(describing: refused))")
    try await server.stop()
  }

  @Test func newVersionSwapsInUnderLoadAndOlderVersionsAreRefused() async throws {
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    let root = pki.path("models")
    try await factory.make(root: root, version: 1)
    let server = try await Self.start(pki, factory, root: root)
    try await waitReady(server, "simple")
    let caller = try goodClient(server)
    let ops = try goodClient(server, "ops")
    let stop = StopFlag()
    let load = Task {
      var failures: [String] = []
      var versions = Set<String>()
      var calls = 0
      await withTaskGroup(of: (Int, [String], Set<String>).self) { group in
        for _ in 0..<4 {
          group.addTask {
            do {
              return try await withClient(server, caller) { client in
                var f: [String] = []
                var v = Set<String>()
                var n = 0
                while !stop.isSet {
                  do {
                    v.insert(try await client.modelInfer(simpleRequest(raw: true)).modelVersion)
                    n += 1
                  } catch { f.append("\(error)") }
                }
                return (n, f, v)
              }
            } catch { return (0, ["connection: \(error)"], []) }
          }
        }
        for await (n, f, v) in group {
          calls += n
          failures += f
          versions.formUnion(v)
        }
      }
      return (calls, failures, versions)
    }
    try await Task.sleep(for: .milliseconds(500))
    try await factory.make(root: root, version: 2)
    try await withClient(server, ops) { _ = try await $0.repositoryModelLoad(.with { $0.modelName = "simple" }) }
    #expect(server.runtime.repository.versions(of: "simple") == ["2"])
    try await Task.sleep(for: .milliseconds(500))
    stop.set()
    let (calls, failures, versions) = await load.value
    #expect(failures.isEmpty, "\(failures.prefix(3))")
    #expect(versions == ["1", "2"])
    #expect(calls >= 4)

    // Rollback: with version 2 accepted (and persisted), version 1 is refused even if it is all that is on disk.
    try FileManager.default.removeItem(atPath: "\(root)/simple/2")
    let rollback = await rpcError {
      try await withClient(server, ops) { _ = try await $0.repositoryModelLoad(.with { $0.modelName = "simple" }) }
    }
    #expect(rollback?.code == .failedPrecondition)
    #expect(rollback?.message.contains("older") == true, "\(rollback?.message ?? "")")
    let state = try String(contentsOfFile: pki.path("state/accepted.json"), encoding: .utf8)
    #expect(state.contains("\"simple\"") && state.contains("2"))
    // Still serving version 2, and unload works for the admin.
    #expect(
      try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }.modelVersion == "2")
    try await withClient(server, ops) { _ = try await $0.repositoryModelUnload(.with { $0.modelName = "simple" }) }
    let gone = await rpcError {
      _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    #expect(gone?.code == .notFound)
    let unknown = await rpcError {
      try await withClient(server, ops) { _ = try await $0.repositoryModelLoad(.with { $0.modelName = "simple-none" }) }
    }
    #expect(unknown?.code == .notFound)
    try await server.stop()
  }

  @Test func packedBundlesLoad() async throws {
    let pki = try TestPKI()
    let factory = TestBundleFactory()
    let staging = pki.path("staging")
    let dir = try await factory.make(root: staging, version: 3)
    let root = pki.path("models")
    try FileManager.default.createDirectory(atPath: "\(root)/simple", withIntermediateDirectories: true)
    try BundlePacker.pack(directory: dir, to: "\(root)/simple/3.tar.zst")
    let server = try await Self.start(pki, factory, root: root)
    try await waitReady(server, "simple", version: "3")
    let client = try goodClient(server)
    #expect(
      try await withClient(server, client) { try await $0.modelInfer(simpleRequest(raw: true)) }.modelVersion == "3")
    try await server.stop()
  }
}

/// A flag tasks can share.
final class StopFlag: Sendable {
  private let value = Atomic<Bool>(false)
  var isSet: Bool { value.load(ordering: .relaxed) }
  func set() { value.store(true, ordering: .relaxed) }
}
