import Crypto
import Foundation
import GRPCCore
import PalisadeIdentity
import PalisadeProto
import PalisadeTestSupport
import Synchronization
import Testing

/// Credentials and policy rotate while a client calls continuously: nothing that should succeed fails, and
/// retired credentials stop working once their connections age out.
@Suite struct RotationTests {
  /// Replaces `path` atomically, as `mv` does.
  static func replace(_ path: String, _ contents: String, mode: Int = 0o644) throws {
    let tmp = path + ".tmp-\(UUID().uuidString)"
    try Data(contents.utf8).write(to: URL(fileURLWithPath: tmp))
    try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: tmp)
    guard rename(tmp, path) == 0 else { throw CocoaError(.fileWriteUnknown) }
  }

  /// Points the symlink `link` at `target` atomically, as Kubernetes volume updates do.
  static func swapLink(_ link: String, to target: String) throws {
    let tmp = link + ".tmp-\(UUID().uuidString)"
    try FileManager.default.createSymbolicLink(atPath: tmp, withDestinationPath: target)
    guard rename(tmp, link) == 0 else { throw CocoaError(.fileWriteUnknown) }
  }

  /// Calls ModelInfer in a loop, a new connection (so a new handshake) for each call, counting failures. Aging
  /// of long-lived connections is checked separately below.
  final class Caller: Sendable {
    let calls = Atomic<Int>(0)
    let failures = Mutex<[String]>([])
    let credential: Mutex<TestClient>
    let stop = Atomic<Bool>(false)

    init(_ client: TestClient) { credential = Mutex(client) }

    func run(_ server: TestServer) async {
      while !stop.load(ordering: .relaxed) {
        let client = credential.withLock { $0 }
        do {
          _ = try await inferRetryingRefused(server, client)
          calls.add(1, ordering: .relaxed)
        } catch {
          failures.withLock { $0.append("\(error)") }
        }
        try? await Task.sleep(for: .milliseconds(20))
      }
    }
  }

  func waitForReload(_ server: TestServer, kind: String, result: String = "success", count: Int = 1) async throws {
    let deadline = ContinuousClock.now + .seconds(15)
    while ContinuousClock.now < deadline {
      let metrics = try await adminGet(server, "/metrics").1
      if metrics.contains("palisade_credential_reloads_total{kind=\"\(kind)\",result=\"\(result)\"} \(count)") {
        return
      }
      try await Task.sleep(for: .milliseconds(100))
    }
    Issue.record("no \(result) reload of \(kind)")
  }

  @Test func everythingRotatesUnderLoad() async throws {
    let pki = try TestPKI()
    // Server credentials behind a symlinked directory, as a Kubernetes secret volume mounts them.
    let v1 = pki.directory.appendingPathComponent("tls-v1").path
    try FileManager.default.createDirectory(atPath: v1, withIntermediateDirectories: true)
    try FileManager.default.copyItem(atPath: pki.path("server.pem"), toPath: "\(v1)/server.pem")
    try FileManager.default.copyItem(atPath: pki.path("server.key"), toPath: "\(v1)/server.key")
    try FileManager.default.createSymbolicLink(atPath: pki.path("tls"), withDestinationPath: v1)
    let server = try await TestServer.start(pki: pki, models: [AddSubModel()]) {
      $0.reload.intervalSeconds = 1
      $0.server.connection.maxAgeSeconds = 3
      $0.server.connection.maxAgeGraceSeconds = 1
      $0.server.tls.certificateChain = pki.path("tls/server.pem")
      $0.server.tls.privateKey = pki.path("tls/server.key")
    }
    let a = try goodClient(server, "a")
    let caller = Caller(a)
    let loop = Task { await caller.run(server) }

    // 1. Server certificate: a new pair swapped in through the symlink.
    let v2 = pki.directory.appendingPathComponent("tls-v2").path
    try FileManager.default.createDirectory(atPath: v2, withIntermediateDirectories: true)
    let newServer = try pki.issue(
      commonName: "localhost", sans: [.dnsName("localhost"), .ipAddress(.init(contentBytes: [127, 0, 0, 1]))],
      usage: .serverAuth)
    try Self.replace("\(v2)/server.pem", newServer.chainPEM)
    try Self.replace("\(v2)/server.key", newServer.keyPEM, mode: 0o600)
    try Self.swapLink(pki.path("tls"), to: v2)
    try await waitForReload(server, kind: "server_certificate")
    let served = try await ProcessTests.run(
      "/usr/bin/openssl",
      [
        "s_client", "-connect", "127.0.0.1:\(server.port)", "-tls1_3", "-alpn", "h2", "-cert", a.cert, "-key", a.key,
        "-showcerts",
      ])
    #expect(
      served.stdout.contains(TestPKI.pem(newServer.certificate).split(separator: "\n")[2]), "new certificate served")

    // 2. Client CA bundle: add a new CA, move the caller to it, then retire the old CA.
    let root2 = try TestPKI.makeCA(name: "Root Two", issuer: nil)
    try Self.replace(pki.path("ca-bundle.pem"), TestPKI.pem(pki.root.certificate) + TestPKI.pem(root2.certificate))
    try await waitForReload(server, kind: "client_ca")
    let b = try pki.client("b", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/b")], issuer: root2)
    let bClient = TestClient(cert: b.cert, key: b.key, token: try pki.token(for: b.issued), issued: b.issued)
    _ = try await inferRetryingRefused(server, bClient)
    // A long-lived connection with the old CA's certificate, opened before the retirement.
    let lingering = Task {
      try await withClient(server, a) { client -> (Bool, Bool) in
        let before = (try? await client.modelInfer(simpleRequest(raw: true))) != nil
        try await Task.sleep(for: .seconds(6))  // > max age + grace
        let after = (try? await client.modelInfer(simpleRequest(raw: true))) != nil
        return (before, after)
      }
    }
    try await Task.sleep(for: .milliseconds(300))
    caller.credential.withLock { $0 = bClient }
    try Self.replace(pki.path("ca-bundle.pem"), TestPKI.pem(root2.certificate))
    try await waitForReload(server, kind: "client_ca", count: 2)
    let retired = await rpcError {
      _ = try await withClient(server, a) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    #expect(retired?.code == .unavailable, "old CA refused at the handshake")
    let (before, after) = try await lingering.value
    #expect(before, "the old connection worked before it aged out")
    #expect(!after, "the old connection stops working once it ages out")

    // 3. JWKS: publish a new kid, move the caller to it, retire the old kid.
    let newKey = P256.Signing.PrivateKey()
    let both = [
      "keys": [
        TokenSigningKey.es256(pki.issuerKey).jwk(kid: "test-1"), TokenSigningKey.es256(newKey).jwk(kid: "test-2"),
      ]
    ]
    try Self.replace(
      pki.path("jwks.json"), String(decoding: try JSONSerialization.data(withJSONObject: both), as: UTF8.self))
    try await waitForReload(server, kind: "jwks")
    let identity = try PeerIdentity(certificate: b.issued.certificate)
    let newToken = try TokenMinter.mint(
      claims: TokenMinter.claims(
        issuer: TestPKI.issuerName, subject: identity.spiffeID.description, audience: TestPKI.audience, ttl: 300,
        certificateThumbprint: identity.thumbprint),
      key: .es256(newKey), kid: "test-2")
    let bNew = TestClient(cert: b.cert, key: b.key, token: newToken, issued: b.issued)
    caller.credential.withLock { $0 = bNew }
    try await Task.sleep(for: .milliseconds(300))
    let onlyNew = ["keys": [TokenSigningKey.es256(newKey).jwk(kid: "test-2")]]
    try Self.replace(
      pki.path("jwks.json"), String(decoding: try JSONSerialization.data(withJSONObject: onlyNew), as: UTF8.self))
    try await waitForReload(server, kind: "jwks", count: 2)
    let oldKid = await rpcError {
      _ = try await withClient(server, bClient) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    #expect(oldKid?.code == .unauthenticated, "retired kid refused")

    // 4. Policy: a broken file is refused and the old policy stays; a valid one takes effect.
    try Self.replace(pki.path("policy.yaml"), "version: 1\nrules:\n  - name: x\n    rpcs: [Nope]\n")
    try await waitForReload(server, kind: "policy", result: "failure")
    _ = try await inferRetryingRefused(server, bNew)
    try Self.replace(
      pki.path("policy.yaml"),
      TestServer.allowAllPolicy
        + "\n  - name: unused\n    principals: [{spiffe: \"spiffe://palisade.test/sa/z\"}]\n    rpcs: [ModelInfer]\n")
    try await waitForReload(server, kind: "policy")

    try await Task.sleep(for: .milliseconds(500))
    caller.stop.store(true, ordering: .relaxed)
    await loop.value
    #expect(caller.failures.withLock { $0 } == [], "calls that should have succeeded failed")
    #expect(caller.calls.load(ordering: .relaxed) > 20)
    let metrics = try await adminGet(server, "/metrics").1
    #expect(metrics.contains("palisade_server_certificate_expiry_seconds"))
    try await server.stop()
  }
}

/// One ModelInfer on a new connection, retried (3 attempts) when the connection itself goes away: with the 3 s
/// maximum connection age this test uses, a slow handshake on a loaded machine can meet the GOAWAY. A refused
/// credential fails every attempt, so this hides nothing the test checks.
func inferRetryingRefused(_ server: TestServer, _ client: TestClient) async throws -> Inference_ModelInferResponse {
  var attempt = 1
  while true {
    do {
      return try await withClient(server, client) { try await $0.modelInfer(simpleRequest(raw: true)) }
    } catch let error as RPCError where error.code == .unavailable && attempt < 3 {
      attempt += 1
    }
  }
}
