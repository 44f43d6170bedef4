import Foundation
import PalisadeTestSupport
import Synchronization
import Testing

/// The real `palisade` executable, as operators run it.
@Suite(.serialized) struct ProcessTests {
  static var binary: String {
    ProcessInfo.processInfo.environment["PALISADE_BIN"] ?? "\(repositoryRoot)/.build/debug/palisade"
  }

  struct Result {
    var status: Int32
    var stdout: String
    var stderr: String
  }

  /// Runs a command to completion (bounded by `timeout`).
  static func run(_ executable: String, _ arguments: [String], timeout: Duration = .seconds(30), stdin: String? = nil)
    async throws -> Result
  {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let out = Pipe()
    let err = Pipe()
    process.standardOutput = out
    process.standardError = err
    let input = Pipe()
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    let deadline = ContinuousClock.now + timeout
    while process.isRunning {
      if ContinuousClock.now > deadline { process.terminate() }
      try await Task.sleep(for: .milliseconds(20))
    }
    return Result(
      status: process.terminationStatus,
      stdout: String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self),
      stderr: String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
  }

  func config(_ pki: TestPKI, extra: String = "") throws -> String {
    try pki.write("jwks.json", pki.jwksJSON())
    try pki.write("policy.yaml", TestServer.allowAllPolicy)
    return try pki.write(
      "palisade.yaml",
      """
      server:
        listen: "127.0.0.1:0"
        tls:
          certificate_chain: server.pem
          private_key: server.key
          client_ca_bundle: ca-bundle.pem
        shutdown_grace_seconds: 5
      auth:
        audience: \(TestPKI.audience)
        issuers:
          - issuer: \(TestPKI.issuerName)
            jwks: jwks.json
      policy:
        file: policy.yaml
      admin:
        listen: "127.0.0.1:0"
      \(extra)
      """)
  }

  @Test func checkValidatesAndExitsZero() async throws {
    let pki = try TestPKI()
    let r = try await Self.run(Self.binary, ["serve", "--config", try config(pki), "--check"])
    #expect(r.status == 0, "\(r.stderr)")
    #expect(r.stdout.contains("configuration OK"))
  }

  @Test func malformedConfigExitsTwoNamingTheKey() async throws {
    let pki = try TestPKI()
    let path = try config(pki, extra: "logging: {level: shouting}")
    let r = try await Self.run(Self.binary, ["serve", "--config", path])
    #expect(r.status == 2)
    #expect(r.stderr.contains("logging.level"), "\(r.stderr)")
  }

  @Test func missingFileAndLooseKeyExitTwoNamingTheFile() async throws {
    let pki = try TestPKI()
    let path = try config(pki)
    try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: pki.path("server.key"))
    let loose = try await Self.run(Self.binary, ["serve", "--config", path, "--check"])
    #expect(loose.status == 2)
    #expect(loose.stderr.contains("server.key") && loose.stderr.contains("chmod 600"), "\(loose.stderr)")
    try FileManager.default.removeItem(atPath: pki.path("ca-bundle.pem"))
    try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: pki.path("server.key"))
    let missing = try await Self.run(Self.binary, ["serve", "--config", path, "--check"])
    #expect(missing.status == 2)
    #expect(missing.stderr.contains("ca-bundle.pem"), "\(missing.stderr)")
    let nofile = try await Self.run(Self.binary, ["serve", "--config", pki.path("absent.yaml")])
    #expect(nofile.status == 2)
  }

  @Test func servesCallsAndStopsCleanlyOnSIGTERM() async throws {
    let pki = try TestPKI()
    let client = try pki.client("cli", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/cli")])
    let serve = try LoggedProcess.serve(config: try config(pki))
    defer { serve.kill() }
    let port = try await serve.port()
    #expect(port != 0, "\(serve.log)")
    let common = [
      "--target", "127.0.0.1:\(port)", "--cert", client.cert, "--key", client.key, "--ca", pki.path("ca-bundle.pem"),
      "--token", try pki.token(for: client.issued),
    ]
    let live = try await Self.run(Self.binary, ["call", "live"] + common)
    #expect(live.status == 0, "\(live.stderr)")
    #expect(live.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "true")
    let metadata = try await Self.run(Self.binary, ["call", "metadata"] + common)
    #expect(metadata.stdout.contains("\"palisade\""))
    let infer = try await Self.run(
      Self.binary, ["call", "infer", "absent", "--input", "-"] + common,
      stdin: #"{"inputs":[{"name":"x","datatype":"FP32","shape":[1],"data":[1]}]}"#)
    #expect(infer.status == 1)
    #expect(infer.stderr.contains("unknown model 'absent'"), "\(infer.stderr)")
    let status = try await serve.terminate()  // SIGTERM
    #expect(status == 0)
  }

  @Test func sighupReloadsAChangedPolicyAndRefusesABrokenOne() async throws {
    let pki = try TestPKI()
    let client = try pki.client("hup", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/hup")])
    // A long interval: only SIGHUP can trigger the reload within this test.
    let serve = try LoggedProcess.serve(config: try config(pki, extra: "reload: {interval_seconds: 3600}"))
    defer { serve.kill() }
    let port = try await serve.port()
    let common = [
      "--target", "127.0.0.1:\(port)", "--cert", client.cert, "--key", client.key, "--ca", pki.path("ca-bundle.pem"),
      "--token", try pki.token(for: client.issued),
    ]
    #expect(try await Self.run(Self.binary, ["call", "metadata"] + common).status == 0)
    // A broken policy: refused on SIGHUP, the old one stays in force.
    try pki.write("policy.yaml", "version: 1\nrules: [{name: x}]\n")
    serve.signal(SIGHUP)
    #expect(try await serve.waitFor("credential reload refused"))
    #expect(try await Self.run(Self.binary, ["call", "metadata"] + common).status == 0)
    // A valid policy without rules: denies everything after SIGHUP.
    try pki.write("policy.yaml", "version: 1\nrules: []\n")
    serve.signal(SIGHUP)
    #expect(try await serve.waitFor("credential reloaded"))
    let denied = try await Self.run(Self.binary, ["call", "metadata"] + common)
    #expect(denied.status == 1)
    #expect(denied.stderr.contains("permissionDenied"), "\(denied.stderr)")
    #expect(try await serve.terminate() == 0)
  }

  @Test func tls12OnlyClientIsRefused() async throws {
    let server = try await TestServer.start()
    let c = try server.pki.client("tls12", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/tls12")])
    let r = try await Self.run(
      "/usr/bin/openssl",
      [
        "s_client", "-connect", "127.0.0.1:\(server.port)", "-tls1_2", "-cert", c.cert, "-key", c.key,
        "-CAfile", server.pki.path("ca-bundle.pem"),
      ])
    #expect(r.status != 0)
    #expect(r.stdout.contains("Cipher is (NONE)") || r.stderr.contains("alert protocol version"), "\(r.stderr)")
    // The same client over TLS 1.3 completes the handshake, so the refusal is about the version.
    let ok = try await Self.run(
      "/usr/bin/openssl",
      [
        "s_client", "-connect", "127.0.0.1:\(server.port)", "-tls1_3", "-alpn", "h2", "-cert", c.cert, "-key", c.key,
        "-CAfile", server.pki.path("ca-bundle.pem"),
      ])
    #expect(ok.stdout.contains("TLSv1.3"), "\(ok.stdout)")
    try await server.stop()
  }

  @Test func clientWithoutCertificateIsRefused() async throws {
    let server = try await TestServer.start()
    let r = try await Self.run(
      "/usr/bin/openssl",
      [
        "s_client", "-connect", "127.0.0.1:\(server.port)", "-tls1_3", "-alpn", "h2", "-ign_eof", "-CAfile",
        server.pki.path("ca-bundle.pem"),
      ],
      stdin: "x")
    #expect(r.stderr.contains("certificate required") || r.stderr.contains("alert"), "\(r.stderr)")
    try await server.stop()
  }

  @Test func devPKIScriptMakesUsableCredentials() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("devpki-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let made = try await Self.run("/bin/bash", ["\(repositoryRoot)/certs/make-dev-pki.sh", dir, "1"])
    #expect(made.status == 0, "\(made.stderr)")
    for key in ["server.key", "client-a.key", "client-b.key", "rogue-client.key"] {
      let mode = try FileManager.default.attributesOfItem(atPath: "\(dir)/\(key)")[.posixPermissions] as? Int
      #expect(mode == 0o600, "\(key)")
    }
    let pki = try TestPKI()
    for name in ["server.pem", "server.key", "ca-bundle.pem"] {
      try? FileManager.default.removeItem(atPath: pki.path(name))
      try FileManager.default.copyItem(atPath: "\(dir)/\(name)", toPath: pki.path(name))
    }
    let server = try await TestServer.start(pki: pki)
    for (client, expected) in [("client-a", true), ("client-b", true), ("rogue-client", false)] {
      let r = try await Self.run(
        Self.binary,
        [
          "call", "live", "--target", "127.0.0.1:\(server.port)", "--cert", "\(dir)/\(client).pem", "--key",
          "\(dir)/\(client).key", "--ca", "\(dir)/ca-bundle.pem",
        ])
      #expect((r.status == 0) == expected, "\(client): \(r.stderr)")
    }
    try await server.stop()
  }
}
