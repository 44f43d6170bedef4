import Foundation
import PalisadeServer
import PalisadeTestSupport
import Synchronization
import Testing

/// The deployment artefacts (deploy/): the image definition, the Kubernetes manifests, the local network-namespace
/// deployment, the admin-port probe the image and the pods use, and the image's runtime in a chroot.
@Suite(.serialized) struct DeployTests {
  static let checks = "\(repositoryRoot)/Tests/Deploy"
  static var isRoot: Bool { getuid() == 0 }
  static var ipTool: String? {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"].first { FileManager.default.isExecutableFile(atPath: $0) }
  }

  /// True while `make run`'s network-namespace demo holds `palisade-srv` (the namespace test would tear it down).
  static var demoNamespaceUp: Bool {
    guard let ip = ipTool else { return false }
    let process = Process()
    process.executableURL = URL(fileURLWithPath: ip)
    process.arguments = ["netns", "list"]
    let out = Pipe()
    process.standardOutput = out
    process.standardError = FileHandle.nullDevice
    guard (try? process.run()) != nil else { return false }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return String(decoding: data, as: UTF8.self).split(whereSeparator: \.isWhitespace).contains("palisade-srv")
  }

  // MARK: the image definition

  @Test func containerfileLintAcceptsTheImageDefinition() async throws {
    let r = try await ProcessTests.run("/usr/bin/python3", ["\(Self.checks)/check_containerfile.py"])
    #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
    #expect(r.stdout.contains("containerfile OK"))
  }

  @Test(arguments: [
    ("ENTRYPOINT [\"/usr/local/bin/palisade\"]", "ENTRYPOINT /usr/local/bin/palisade", "exec (JSON) form"),
    (
      "CMD [\"serve\", \"--config\", \"/etc/palisade/palisade.yaml\"]",
      "CMD serve --config /etc/palisade/palisade.yaml",
      "exec (JSON) form"
    ),
    ("USER 65532:65532", "USER palisade", "numeric"),
    ("USER 65532:65532", "USER 0", "must not be root"),
    (
      "COPY --from=build /rootfs/ /", "COPY --from=build /rootfs/ /\nRUN [\"/usr/local/bin/palisade\", \"--help\"]",
      "RUN in the runtime stage"
    ),
    ("FROM scratch AS runtime", "FROM debian:bookworm-slim AS runtime", "must be minimal"),
    ("deploy/release/build.sh .build/release-image", "swift build -c release", "deploy/release/build.sh"),
    (
      "ARG DEBIAN_IMAGE=debian:bookworm-slim@sha256:", "ARG DEBIAN_IMAGE=debian:bookworm-slim\nARG OLD_DIGEST=",
      "not pinned by digest"
    ),
    ("ARG SWIFT_IMAGE=swift:6.3", "ARG SWIFT_IMAGE=swift:5.10", "Swift 6.3"),
    (
      "  CMD [\"/usr/local/bin/palisade\", \"call\", \"health\", \"--quiet\", \"--url\", \"http://127.0.0.1:9464/healthz\"]",
      "  CMD curl -f http://127.0.0.1:9464/healthz", "HEALTHCHECK must use CMD in exec form"
    ),
  ])
  func containerfileLintRefusesWhatTheImageMustNotBe(original: String, broken: String, message: String) async throws {
    let text = try String(contentsOfFile: "\(repositoryRoot)/deploy/container/Containerfile", encoding: .utf8)
    #expect(text.contains(original), "the Containerfile no longer contains \(original)")
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("containerfile-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let path = "\(dir)/Containerfile"
    try text.replacingOccurrences(of: original, with: broken).write(toFile: path, atomically: true, encoding: .utf8)
    let r = try await ProcessTests.run(
      "/usr/bin/python3", ["\(Self.checks)/check_containerfile.py", path, "\(repositoryRoot)/.dockerignore"])
    #expect(r.status == 1, "\(broken) was accepted: \(r.stdout)")
    #expect(r.stdout.contains(message), "\(r.stdout)")
  }

  @Test func containerfileLintRequiresADockerignoreThatKeepsKeysOut() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("dockerignore-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try ".build*\n.git\n".write(toFile: "\(dir)/.dockerignore", atomically: true, encoding: .utf8)
    let r = try await ProcessTests.run(
      "/usr/bin/python3",
      [
        "\(Self.checks)/check_containerfile.py", "\(repositoryRoot)/deploy/container/Containerfile",
        "\(dir)/.dockerignore",
      ])
    #expect(r.status == 1)
    #expect(r.stdout.contains("certs/out") && r.stdout.contains("**/*.key"), "\(r.stdout)")
  }

  // MARK: Release

  /// Every resolved package is pinned (Package.swift `exact:` for the direct ones, deploy/release/pins.json for the
  /// whole graph), and a pin that no longer matches is named.
  @Test func everyPackageIsPinnedAndADriftIsNamed() async throws {
    let ok = try await ProcessTests.run("/usr/bin/python3", ["\(repositoryRoot)/deploy/release/check_pins.py"])
    #expect(ok.status == 0, "\(ok.stdout)\(ok.stderr)")
    #expect(ok.stdout.contains("packages match"))
    // The same check against a pin list with one version changed.
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pins-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let pins = try String(contentsOfFile: "\(repositoryRoot)/deploy/release/pins.json", encoding: .utf8)
    #expect(pins.contains("\"version\": \"2.101.3\""))
    try pins.replacingOccurrences(of: "\"version\": \"2.101.3\"", with: "\"version\": \"2.99.0\"")
      .write(toFile: "\(dir)/pins.json", atomically: true, encoding: .utf8)
    let drift = try await ProcessTests.run(
      "/usr/bin/python3", ["\(repositoryRoot)/deploy/release/check_pins.py", "--pins", "\(dir)/pins.json"])
    #expect(drift.status == 1, "\(drift.stdout)\(drift.stderr)")
    #expect(drift.stderr.contains("swift-nio: pinned 2.99.0"), "\(drift.stderr)")
  }

  /// Two compiles of one Swift file differ in `.swift_modhash` (swiftc hashes its own invocation, temporary object
  /// paths included) and so in the build-id; after `normalize_elf.py` they are the same bytes, the section is gone,
  /// the build-id is a content hash, and the program still runs. A file that is not ELF is refused by name.
  @Test func theReleaseNormaliserRemovesTheCompilersPerInvocationBytes() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("normalize-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    try "print(\"normalised \\(CommandLine.arguments.count)\")\n".write(
      toFile: "\(dir)/main.swift", atomically: true, encoding: .utf8)
    let normalise = "\(repositoryRoot)/deploy/release/normalize_elf.py"
    var digests: [String] = []
    for name in ["one", "two"] {
      let out = try await Shell.run(
        "cd \(dir) && swiftc -O main.swift -o \(name) && objdump -h \(name) | grep -c swift_modhash"
          + " && strip --strip-all \(name) && python3 \(normalise) \(name) && objdump -h \(name) | grep -c swift_modhash"
          + " || true; ./\(name); sha256sum \(name)")
      let lines = out.split(separator: "\n").map(String.init)
      #expect(lines.first == "1", "the compiler no longer writes .swift_modhash? \(out)")
      #expect(lines.contains("0"), "the section is still there after normalising: \(out)")
      #expect(lines.contains("normalised 1"), "the normalised program does not run: \(out)")
      digests.append(String(lines.last?.prefix(64) ?? ""))
    }
    #expect(digests[0].count == 64 && digests[0] == digests[1], "\(digests)")
    let refused = try await ProcessTests.run("/usr/bin/python3", [normalise, "\(dir)/main.swift"])
    #expect(refused.status == 2 && refused.stderr.contains("not a 64-bit little-endian ELF"), "\(refused.stderr)")
  }

  /// The SBOM names every Swift package at its exact version, the toolchain and the Debian packages of the
  /// libraries, carries the binary's digest, and is byte-for-byte the same when written twice (deterministic).
  @Test func theSBOMIsCompleteAndDeterministic() async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sbom-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let binary = ProcessTests.binary
    var outputs: [String] = []
    for name in ["one.json", "two.json"] {
      let r = try await ProcessTests.run(
        "/usr/bin/env",
        [
          "SOURCE_DATE_EPOCH=1700000000", "/usr/bin/python3", "\(repositoryRoot)/deploy/release/sbom.py", "--binary",
          binary,
          "--out", "\(dir)/\(name)", "--libs", "/lib/x86_64-linux-gnu/libc.so.6", "/etc/ssl/certs/ca-certificates.crt",
        ])
      #expect(r.status == 0, "\(r.stderr)")
      outputs.append(try String(contentsOfFile: "\(dir)/\(name)", encoding: .utf8))
    }
    #expect(outputs[0] == outputs[1])
    let bom = try #require(try JSONSerialization.jsonObject(with: Data(outputs[0].utf8)) as? [String: Any])
    #expect(bom["bomFormat"] as? String == "CycloneDX" && bom["specVersion"] as? String == "1.5")
    #expect((bom["serialNumber"] as? String)?.hasPrefix("urn:uuid:") == true)
    let metadata = try #require(bom["metadata"] as? [String: Any])
    #expect(metadata["timestamp"] as? String == "2023-11-14T22:13:20Z")
    let hashes = (metadata["component"] as? [String: Any])?["hashes"] as? [[String: String]]
    #expect(hashes?.first?["content"] == EvidenceBuilder.fileSHA256(binary))
    let components = try #require(bom["components"] as? [[String: Any]])
    let purls = components.compactMap { $0["purl"] as? String }
    #expect(purls.contains("pkg:swift/github.com/apple/swift-nio@2.101.3"))
    #expect(purls.contains("pkg:swift/github.com/grpc/grpc-swift-2@2.4.3"))
    #expect(purls.contains { $0.hasPrefix("pkg:deb/") && $0.contains("/libc6@") })
    #expect(purls.contains { $0.contains("/ca-certificates@") })
    #expect(
      components.contains { $0["name"] as? String == "swift" && ($0["version"] as? String)?.hasPrefix("6.") == true })
    // A library no package owns is refused by name rather than left out.
    try "x".write(toFile: "\(dir)/orphan.so", atomically: true, encoding: .utf8)
    let refused = try await ProcessTests.run(
      "/usr/bin/python3",
      [
        "\(repositoryRoot)/deploy/release/sbom.py", "--binary", binary, "--out", "\(dir)/x.json", "--libs",
        "\(dir)/orphan.so",
      ])
    #expect(refused.status == 1 && refused.stderr.contains("orphan.so: no Debian package owns it"), "\(refused.stderr)")
  }

  // MARK: Kubernetes

  /// Every rendered manifest against the Kubernetes OpenAPI schemas (offline, strict) and the cert-manager
  /// Certificate schema; the security properties asserted; each property broken on purpose and caught.
  @Test func kubernetesManifestsValidateOfflineAndHoldTheirSecurityProperties() async throws {
    #expect(FileManager.default.isExecutableFile(atPath: InteropTests.python), "run `make venv` first")
    let r = try await ProcessTests.run(
      InteropTests.python, ["\(Self.checks)/check_manifests.py", "--selftest"], timeout: .seconds(300))
    #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    #expect(r.stdout.contains("manifests OK") && r.stdout.contains("selftest OK"), "\(r.stdout)")
  }

  /// The policy and the server configs the pods get (the StatefulSet's, with the audit log, the attestation key and
  /// the report socket; and the KServe runtime's) are ones `palisade serve --check` accepts, and the sidecar's
  /// config one `palisade egress --check` accepts (mount paths moved to real files).
  @Test func palisadeAcceptsTheKubernetesPolicyAndConfig() async throws {
    let base = "\(Self.kube)/base/config"
    let policy = try await ProcessTests.run(ProcessTests.binary, ["policy", "check", "\(base)/policy.yaml"])
    #expect(policy.status == 0, "\(policy.stdout)\(policy.stderr)")
    let pki = try TestPKI()
    for path in [
      try await Self.podConfig(pki),
      try Self.movedConfig(pki, "\(Self.kube)/kserve/palisade.yaml", [("[/mnt/models]", "[models]")]),
    ] {
      let check = try await ProcessTests.run(ProcessTests.binary, ["serve", "--config", path, "--check"])
      #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
    }
    // The sidecar's config: its report socket is the server's, its allowlist lets the checkpoints out.
    var egress = try String(contentsOfFile: "\(base)/egress.yaml", encoding: .utf8)
    for (mounted, local) in [
      ("[/models]", "[\(pki.path("models"))]"), ("/run/palisade/reports/", "\(pki.path("reports"))/"),
    ] {
      #expect(egress.contains(mounted), "the sidecar's config no longer names \(mounted)")
      egress = egress.replacingOccurrences(of: mounted, with: local)
    }
    let egressPath = try pki.write("egress.yaml", egress)
    let egressCheck = try await ProcessTests.run(ProcessTests.binary, ["egress", "--config", egressPath, "--check"])
    #expect(egressCheck.status == 0, "\(egressCheck.stdout)\(egressCheck.stderr)")
    #expect(egressCheck.stdout.contains("configuration OK"), "\(egressCheck.stdout)")
  }

  /// The pod's server config, run: it binds the report socket (0660), writes audit records for refused calls, and at
  /// SIGTERM exits 0 after writing a final signed checkpoint that covers every record (what the shutdown budget in
  /// docs/operations.md relies on). No timing assertion: the budget is checked statically by check_manifests.py.
  @Test func kubernetesConfigWritesTheFinalCheckpointAtSIGTERM() async throws {
    let pki = try TestPKI()
    var config = try String(contentsOfFile: try await Self.podConfig(pki), encoding: .utf8)
    config = config.replacingOccurrences(of: "0.0.0.0:8443", with: "127.0.0.1:0")
      .replacingOccurrences(of: "0.0.0.0:9464", with: "127.0.0.1:0")
      // A checkpoint only at close: the interval and record count are out of reach in this test.
      .replacingOccurrences(of: "checkpoint_every_records: 1000", with: "checkpoint_every_records: 1000000")
      .replacingOccurrences(of: "checkpoint_interval_seconds: 10", with: "checkpoint_interval_seconds: 3600")
    let serve = try LoggedProcess.serve(config: try pki.write("palisade.yaml", config))
    defer { serve.kill() }
    let port = try await serve.port()
    #expect(port != 0, "\(serve.log)")
    var socket = stat()
    #expect(
      stat(pki.path("reports/egress-reports.sock"), &socket) == 0 && socket.st_mode & 0o777 == 0o660, "\(serve.log)")
    let client = try pki.client(
      "client", sans: [.uniformResourceIdentifier("spiffe://palisade.test/ns/demo/sa/caller")])
    // No token: refused, and each refusal is an audit record.
    for _ in 0..<3 {
      let r = try await ProcessTests.run(
        ProcessTests.binary,
        [
          "call", "ready", "--target", "127.0.0.1:\(port)", "--cert", client.cert, "--key", client.key, "--ca",
          pki.path("ca-bundle.pem"),
        ])
      #expect(r.status != 0 && r.stderr.contains("unauthenticated"), "\(r.stdout)\(r.stderr)")
    }
    let verify = [
      "audit", "verify", pki.path("audit/log"), "--key", pki.path("audit.pub.pem"), "--origin",
      "example.internal/palisade/audit",
    ]
    let before = try await ProcessTests.run(ProcessTests.binary, verify)
    #expect(
      before.stdout.contains("3 records") && before.stdout.contains("0 checkpoints"), "\(before.stdout)\(before.stderr)"
    )
    #expect(try await serve.terminate() == 0, "\(serve.log)")
    #expect(serve.log.contains("palisade stopped"), "\(serve.log)")
    let after = try await ProcessTests.run(ProcessTests.binary, verify)
    #expect(after.status == 0 && after.stdout.contains("latest checkpoint: size 3"), "\(after.stdout)\(after.stderr)")
  }

  static let kube = "\(repositoryRoot)/deploy/kubernetes"

  /// The StatefulSet's server config with every mount moved into `pki`'s directory, and the files the mounts hold
  /// there: the trust material, the audit and attestation keys as kubelet mounts Secrets for the pod's fsGroup
  /// (0440, the server's own group), the policy, and the report socket's directory.
  static func podConfig(_ pki: TestPKI) async throws -> String {
    try pki.write("issuer-jwks.json", pki.jwksJSON())
    let key = pki.path("publisher.key")
    #expect(
      try await ProcessTests.run(
        "/usr/bin/openssl", ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key]
      ).status == 0)
    #expect(
      try await ProcessTests.run(
        "/usr/bin/openssl", ["ec", "-in", key, "-pubout", "-out", pki.path("publisher.pub.pem")]
      ).status == 0)
    let keygen = try await ProcessTests.run(
      ProcessTests.binary,
      ["audit", "keygen", "--out", pki.path("audit"), "--origin", "example.internal/palisade/audit"])
    #expect(keygen.status == 0, "\(keygen.stderr)")
    #expect(
      try await ProcessTests.run(
        "/usr/bin/openssl", ["genpkey", "-algorithm", "ed25519", "-out", pki.path("attestation.key")]
      ).status == 0)
    for name in ["audit.key", "attestation.key"] {
      try FileManager.default.setAttributes([.posixPermissions: 0o440], ofItemAtPath: pki.path(name))
    }
    return try movedConfig(
      pki, "\(kube)/base/config/palisade.yaml",
      [
        ("[/models]", "[models]"), ("/var/lib/palisade/audit/log", "audit/log"),
        ("/etc/palisade/audit-key/audit.key", "audit.key"),
        ("/etc/palisade/attestation/attestation.key", "attestation.key"),
        ("/run/palisade/reports/egress-reports.sock", "reports/egress-reports.sock"),
      ])
  }

  /// `file` with the mounts every server config shares, and `moves`, replaced by paths in `pki`'s directory.
  static func movedConfig(_ pki: TestPKI, _ file: String, _ moves: [(String, String)]) throws -> String {
    for dir in ["models", "policy", "reports"] {
      try FileManager.default.createDirectory(atPath: pki.path(dir), withIntermediateDirectories: true)
    }
    if !FileManager.default.fileExists(atPath: pki.path("policy/policy.yaml")) {
      try FileManager.default.copyItem(
        atPath: "\(kube)/base/config/policy.yaml", toPath: pki.path("policy/policy.yaml"))
    }
    var config = try String(contentsOfFile: file, encoding: .utf8)
    for (mounted, local) in [
      ("/etc/palisade/tls/tls.crt", "server.pem"), ("/etc/palisade/tls/tls.key", "server.key"),
      ("/etc/palisade/tls/ca.crt", "ca-bundle.pem"), ("/etc/palisade/trust/issuer-jwks.json", "issuer-jwks.json"),
      ("/etc/palisade/trust/publisher.pub.pem", "publisher.pub.pem"),
      ("/etc/palisade/policy/policy.yaml", "policy/policy.yaml"),
      ("/var/lib/palisade/state/accepted-versions.json", "state/accepted-versions.json"),
      ("/tmp/palisade-unpack", "unpack"),
    ] + moves {
      #expect(config.contains(mounted), "\(file) no longer names \(mounted)")
      config = config.replacingOccurrences(of: mounted, with: local)
    }
    return try pki.write(
      "palisade-\(URL(fileURLWithPath: file).deletingLastPathComponent().lastPathComponent).yaml", config)
  }

  // MARK: the admin-port probe (`palisade call health`)

  @Test func healthProbeReportsTheAdminEndpoint() async throws {
    let pki = try TestPKI()
    let serve = try LoggedProcess.serve(config: try ProcessTests().config(pki))
    defer { serve.kill() }
    let admin = try await Self.adminPort(serve)
    #expect(admin != 0, "\(serve.log)")
    func probe(_ args: [String]) async throws -> ProcessTests.Result {
      try await ProcessTests.run(ProcessTests.binary, ["call", "health"] + args)
    }
    let healthz = try await probe(["--url", "http://127.0.0.1:\(admin)/healthz"])
    #expect(healthz.status == 0, "\(healthz.stderr)")
    #expect(healthz.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "200 ok")
    let readyz = try await probe(["--url", "http://localhost:\(admin)/readyz", "--quiet"])
    #expect(readyz.status == 0 && readyz.stdout.isEmpty, "\(readyz.stdout)\(readyz.stderr)")
    let missing = try await probe(["--url", "http://127.0.0.1:\(admin)/nothing"])
    #expect(missing.status == 1)
    #expect(missing.stdout.hasPrefix("404"), "\(missing.stdout)")
    // Draining: SIGTERM turns /healthz into 503 while in-flight calls finish; the probe then fails.
    #expect(try await serve.terminate() == 0)
    let gone = try await probe(["--url", "http://127.0.0.1:\(admin)/healthz"])
    #expect(gone.status == 1)
    #expect(gone.stderr.contains("connect"), "\(gone.stderr)")
  }

  @Test(arguments: [
    ("https://127.0.0.1:9464/healthz", "must start with http://"),
    ("http://admin.internal:9464/healthz", "numeric address or localhost"),
    ("http://127.0.0.1/healthz", "needs a port"),
    ("http://127.0.0.1:70000/healthz", "port from 1 to 65535"),
    ("http://127.0.0.1:9464/a b", "printable ASCII"),
  ])
  func healthProbeRefusesURLsItCannotProbeSafely(url: String, message: String) async throws {
    let r = try await ProcessTests.run(ProcessTests.binary, ["call", "health", "--url", url])
    #expect(r.status != 0)
    #expect(r.stderr.contains(message), "\(r.stderr)")
  }

  /// The "admin endpoint listening" log line's port.
  static func adminPort(_ serve: LoggedProcess) async throws -> Int {
    guard try await serve.waitFor("admin endpoint listening") else { return 0 }
    for line in serve.log.split(separator: "\n") where line.contains("admin endpoint listening") {
      if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
        let listen = object["listen"] as? String, let p = Int(listen.split(separator: ":").last ?? "")
      {
        return p
      }
    }
    return 0
  }

  // MARK: the local network-namespace deployment (root)

  /// deploy/local/netns-up.sh: the server in its namespace is reachable from the host over mTLS, reaches the
  /// sidecar's address and port, and nothing beyond the namespace's /30 (nor, with nft, other host ports).
  @Test(
    .enabled(if: DeployTests.isRoot && DeployTests.ipTool != nil, "needs root and iproute2 (ip netns)"),
    .disabled(
      if: DeployTests.demoNamespaceUp,
      "make run's network-namespace demo (palisade-srv) is up: stop it (Ctrl-C, or deploy/local/netns-down.sh) to run this test"
    ))
  func localNamespaceServerReachesOnlyTheSidecar() async throws {
    let ip = try #require(Self.ipTool)
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("netns-\(UUID().uuidString)").path
    defer { try? FileManager.default.removeItem(atPath: dir) }
    let pkiMade = try await ProcessTests.run("\(repositoryRoot)/certs/make-dev-pki.sh", ["\(dir)/pki", "2"])
    #expect(pkiMade.status == 0, "\(pkiMade.stderr)")
    try
      "version: 1\nrules:\n  - name: demo\n    principals: [{spiffe_prefix: spiffe://palisade.dev/ns/demo}]\n    rpcs: [\"*\"]\n"
      .write(toFile: "\(dir)/policy.yaml", atomically: true, encoding: .utf8)
    var config = try String(contentsOfFile: "\(repositoryRoot)/deploy/local/palisade-netns.yaml", encoding: .utf8)
    config = config.replacingOccurrences(of: "../../certs/out/", with: "pki/")
      .replacingOccurrences(of: "10.231.0.2:8443", with: "10.231.0.2:0")
      .replacingOccurrences(of: "10.231.0.2:9464", with: "10.231.0.2:0")
      .replacingOccurrences(of: "format: text", with: "format: json")
    // No models here: the namespace is the subject.
    if let start = config.range(of: "models:\n"), let end = config.range(of: "admin:\n") {
      config.removeSubrange(start.lowerBound..<end.lowerBound)
    }
    try config.write(toFile: "\(dir)/palisade.yaml", atomically: true, encoding: .utf8)

    let up = try await ProcessTests.run("\(repositoryRoot)/deploy/local/netns-up.sh", [])
    #expect(up.status == 0, "\(up.stdout)\(up.stderr)")
    defer {
      _ = try? Process.run(URL(fileURLWithPath: "\(repositoryRoot)/deploy/local/netns-down.sh"), arguments: [])
        .waitUntilExit()
    }
    let filtered = up.stdout.contains("reaches only 10.231.0.1:3128")

    let serve = try LoggedProcess(
      ip, ["netns", "exec", "palisade-srv", ProcessTests.binary, "serve", "--config", "\(dir)/palisade.yaml"])
    defer { serve.kill() }
    let port = try await serve.jsonPort(after: "palisade serving")
    #expect(port != 0, "\(serve.log)")
    // The host reaches the server on the namespace's address (the dev certificate names it).
    let live = try await ProcessTests.run(
      ProcessTests.binary,
      [
        "call", "live", "--target", "10.231.0.2:\(port)", "--cert", "\(dir)/pki/client-a.pem", "--key",
        "\(dir)/pki/client-a.key", "--ca", "\(dir)/pki/ca-bundle.pem",
      ])
    #expect(live.status == 0 && live.stdout.contains("true"), "\(live.stdout)\(live.stderr)\n\(serve.log)")

    // Stand-ins on the host end: the sidecar's port, and another service the host binds.
    let sidecar = try LoggedProcess(
      "/usr/bin/python3", ["-u", "-m", "http.server", "--bind", "10.231.0.1", "3128", "--directory", dir])
    defer { sidecar.kill() }
    let other = try LoggedProcess(
      "/usr/bin/python3", ["-u", "-m", "http.server", "--bind", "0.0.0.0", "0", "--directory", dir])
    defer { other.kill() }
    #expect(try await sidecar.waitFor("Serving HTTP"), "\(sidecar.log)")
    let otherPort = try await other.httpServerPort()
    func fromNamespace(_ url: String) async throws -> ProcessTests.Result {
      try await ProcessTests.run(
        ip, ["netns", "exec", "palisade-srv", ProcessTests.binary, "call", "health", "--timeout", "2", "--url", url])
    }
    let toSidecar = try await fromNamespace("http://10.231.0.1:3128/")
    #expect(toSidecar.status == 0, "the namespace cannot reach the sidecar's port: \(toSidecar.stderr)")
    let beyond = try await fromNamespace("http://192.0.2.1:80/")
    #expect(beyond.status == 1)
    #expect(beyond.stderr.contains("unreachable"), "\(beyond.stderr)")
    if filtered {
      let otherService = try await fromNamespace("http://10.231.0.1:\(otherPort)/")
      #expect(otherService.status == 1, "the namespace reached another host port: \(otherService.stdout)")
    }
    #expect(try await serve.terminate() == 0)
  }

  // MARK: the image's runtime, without an engine (root; slow: needs the static release build)

  /// `make test-image` builds the static-stdlib release binary into .build-static and runs this with
  /// PALISADE_IMAGE_TEST=1; `make test` skips it (the static build takes longer than the rest of the suite).
  @Test(
    .enabled(
      if: ProcessInfo.processInfo.environment["PALISADE_IMAGE_TEST"] == "1",
      "the image runtime test runs with `make test-image` (PALISADE_IMAGE_TEST=1; it needs the static release build)"),
    .enabled(if: DeployTests.isRoot, "needs root (unshare, mount, chroot)"))
  func imageRuntimeServesOverMTLSFromAMinimalRootFilesystem() async throws {
    let staticBinary =
      ProcessInfo.processInfo.environment["PALISADE_STATIC_BIN"] ?? "\(repositoryRoot)/.build-static/release/palisade"
    try #require(
      FileManager.default.isExecutableFile(atPath: staticBinary),
      "no static binary at \(staticBinary): `make test-image` builds it")
    let r = try await ProcessTests.run(
      "\(Self.checks)/image_runtime.sh", [staticBinary, ProcessTests.binary], timeout: .seconds(300))
    #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    #expect(r.stdout.contains("image runtime OK"), "\(r.stdout)")
  }
}
