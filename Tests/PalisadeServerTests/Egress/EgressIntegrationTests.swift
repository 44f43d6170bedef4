import Foundation
import PalisadeAudit
import PalisadeOutbound
import PalisadeServer
import PalisadeTestSupport
import PalisadeYAML
import Testing

/// The server and a real `palisade egress` process together: signed audit checkpoints leave only through the
/// sidecar and reach a collector; a request the sidecar blocks is reported back and lands in the audit log.
@Suite struct EgressIntegrationTests {
  @Test func checkpointsShipThroughTheSidecarAndBlocksAreAudited() async throws {
    let pki = try TestPKI()
    let received = pki.path("collected.txt")
    let (collector, collectorPort) = try ShippingRig.collector(ShippingRig.appendingCollector, file: received)
    defer { kill(collector.processIdentifier, SIGKILL) }
    let rig = try await ShippingRig.server(pki, collectorPort: collectorPort)
    let server = rig.server
    let key = rig.auditKey
    let proxySocket = rig.proxySocket
    let sidecar = try await rig.sidecar()
    defer { kill(sidecar.processIdentifier, SIGKILL) }

    // A call makes a record and a checkpoint; the shipper posts it through the sidecar to the collector.
    let caller = try goodClient(server)
    _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
    var shipped = ""
    for _ in 0..<200 {
      shipped = (try? String(contentsOfFile: received, encoding: .utf8)) ?? ""
      if shipped.contains("palisade.test/audit") { break }
      try await Task.sleep(for: .milliseconds(50))
    }
    #expect(shipped.hasPrefix("palisade.test/audit\n"), "collector got: \(shipped)")
    let note = String(shipped.components(separatedBy: "\n--\n")[0])
    #expect((try? SignedCheckpoint.verify(note: note, key: key.verifyingKey)) != nil, "the shipped checkpoint verifies")

    // Something leaving with a private key in it is blocked by the sidecar and shows up in the audit log.
    let leak = EgressClient(proxy: .unix(path: proxySocket))
    let refused = try await leak.send(
      OutboundRequest(
        url: "http://localhost:\(collectorPort)/checkpoints/x",
        body: Array(
          "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n"
            .utf8)))
    #expect(refused.status == 403 && refused.blockedReason != nil)
    await leak.shutdown()
    try await Task.sleep(for: .milliseconds(300))
    try await server.stop()
    let log = try AuditVerifier.verify(directory: pki.path("audit"), key: key.verifyingKey)
    let records = try log.records.map { try JSONDecoder().decode(AuditRecord.self, from: Data($0)) }
    let block = try #require(records.first { $0.kind == .egressBlock }, "\(records.map(\.kind))")
    #expect(block.reason?.hasPrefix("private_key") == true && block.details["host"] == "localhost", "\(block)")
  }

  /// The checkpoint written when the log closes at shutdown covers the drained calls: it leaves through the sidecar
  /// before the server stops, not at the next start (which a pod that is scaled away never has).
  @Test func theFinalCheckpointLeavesThroughTheSidecarAtShutdown() async throws {
    let pki = try TestPKI()
    let received = pki.path("collected.txt")
    let (collector, collectorPort) = try ShippingRig.collector(ShippingRig.appendingCollector, file: received)
    defer { kill(collector.processIdentifier, SIGKILL) }
    // No checkpoint while serving: only the one written when the log closes covers the calls.
    let rig = try await ShippingRig.server(
      pki, collectorPort: collectorPort, checkpointEveryRecords: 10_000_000, checkpointIntervalSeconds: 86_400)
    let server = rig.server
    let key = rig.auditKey
    let sidecar = try await rig.sidecar()
    defer { kill(sidecar.processIdentifier, SIGKILL) }
    let caller = try goodClient(server)
    for _ in 0..<3 {
      _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    try await server.stop()

    // When `stop` returns the shipper has seen its request through the sidecar (or given up): no waiting here.
    let log = try AuditVerifier.verify(directory: pki.path("audit"), key: key.verifyingKey)
    #expect(log.records.count >= 3, "three calls")
    let shipped = (try? String(contentsOfFile: received, encoding: .utf8)) ?? ""
    let notes = shipped.components(separatedBy: "\n--\n").filter { !$0.isEmpty }
    let last = try #require(notes.last, "nothing reached the collector")
    let checkpoint = try SignedCheckpoint.verify(note: last, key: key.verifyingKey)
    #expect(checkpoint.treeSize == UInt64(log.records.count), "the last checkpoint shipped covers the whole log")
  }
}

@Suite(.serialized) struct EgressReportReceiverTests {
  static let event =
    #"{"schema":"palisade.egress/v1","type":"blocked","time":"t","id":"e1","reason":"canary","location":"body","detail":"canary token (config)","method":"POST","scheme":"https","host":"x.example","port":443,"body_bytes":10}"#

  /// Sends one datagram from a python3 child process; with `uid`, the child drops to that uid and gid first (needs
  /// root). Returns the child's pid.
  static func send(_ payload: String, to socket: String, asUID uid: UInt32? = nil) async throws -> Int32 {
    let script = """
      import os, socket, sys
      if sys.argv[3] != "-":
          os.setgid(int(sys.argv[3]))
          os.setuid(int(sys.argv[3]))
      s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
      s.sendto(sys.argv[2].encode(), sys.argv[1])
      print(os.getpid())
      """
    let r = try await ProcessTests.run(
      "/usr/bin/env", ["python3", "-c", script, socket, payload, uid.map { String($0) } ?? "-"])
    #expect(r.status == 0, "the datagram was not sent: \(r.stderr)")
    return Int32(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
  }

  /// A server with an audit log and the report socket, configured by `configure`.
  static func server(_ pki: TestPKI, _ configure: (inout ServerConfig.Egress) -> Void) async throws
    -> (TestServer, AuditSigningKey)
  {
    let key = try AuditSigningKey.generate(name: "palisade.test/audit")
    let keyPath = try pki.write("audit.key", key.privateKeyPEM, mode: 0o600)
    let reports = pki.path("r.sock")
    let server = try await TestServer.start(pki: pki, models: []) {
      var audit = ServerConfig.Audit(directory: pki.path("audit"), key: keyPath)
      audit.origin = "palisade.test/audit"
      $0.audit = audit
      var egress = ServerConfig.Egress(reportSocket: reports)
      configure(&egress)
      $0.egress = egress
    }
    #expect(await server.runtime.egressReports?.bound.wait() == true)
    return (server, key)
  }

  static func auditRecords(_ pki: TestPKI, _ key: AuditSigningKey) throws -> [AuditRecord] {
    let log = try AuditVerifier.verify(directory: pki.path("audit"), key: key.verifyingKey)
    return try log.records.map { try JSONDecoder().decode(AuditRecord.self, from: Data($0)) }
  }

  static func metricsText(_ server: TestServer) -> String {
    var buffer: [UInt8] = []
    server.runtime.metrics.registry.emit(into: &buffer)
    return String(decoding: buffer, as: UTF8.self)
  }

  @Test func aReportDatagramBecomesAnAuditRecordNamingItsVerifiedSender() async throws {
    let pki = try TestPKI()
    let (server, key) = try await Self.server(pki) { _ in }
    let pid = try await Self.send(Self.event, to: pki.path("r.sock"))
    _ = try await Self.send("not json", to: pki.path("r.sock"))
    try await Task.sleep(for: .milliseconds(300))
    try await server.stop()
    let records = try Self.auditRecords(pki, key)
    let block = try #require(records.first { $0.kind == .egressBlock })
    #expect(block.reason == "canary: canary token (config)" && block.details["event_id"] == "e1")
    #expect(
      block.details["sender_uid"] == String(getuid()) && block.details["sender_pid"] == String(pid), "\(block.details)")
    #expect(records.filter { $0.kind == .egressBlock }.count == 1, "the malformed report is dropped")
  }

  @Test func aReportFromAUIDThatIsNotAllowedIsDroppedCountedAndNotAudited() async throws {
    let pki = try TestPKI()
    // Only another UID may report: this process's own well-formed reports are refused.
    let other = getuid() == 4242 ? UInt32(4243) : UInt32(4242)
    let (server, key) = try await Self.server(pki) { $0.reportSenderUIDs = [other] }
    _ = try await Self.send(Self.event, to: pki.path("r.sock"))
    _ = try await Self.send(Self.event, to: pki.path("r.sock"))
    var counted = false
    for _ in 0..<200 where !counted {
      counted = Self.metricsText(server).contains(#"reason="unauthenticated_egress_report"} 2"#)
      if !counted { try await Task.sleep(for: .milliseconds(25)) }
    }
    #expect(counted, "\(Self.metricsText(server))")
    try await server.stop()
    #expect(
      try Self.auditRecords(pki, key).filter { $0.kind == .egressBlock }.isEmpty, "forged records reached the audit log"
    )
  }

  @Test(
    "a process that can write to the socket but runs as another user (nobody) cannot add audit records",
    .enabled(if: getuid() == 0, "needs root to run a child as nobody"))
  func aReportFromNobodyIsRefused() async throws {
    let pki = try TestPKI()
    // The file system lets nobody in (directory 0755, socket 0666): only the sender check stands in the way.
    chmod(pki.directory.path, 0o755)
    let (server, key) = try await Self.server(pki) { $0.reportSocketMode = 0o666 }
    _ = try await Self.send(
      Self.event.replacingOccurrences(of: "\"e1\"", with: "\"forged\""), to: pki.path("r.sock"), asUID: 65534)
    let pid = try await Self.send(Self.event, to: pki.path("r.sock"))
    try await Task.sleep(for: .milliseconds(300))
    #expect(Self.metricsText(server).contains(#"reason="unauthenticated_egress_report"} 1"#))
    try await server.stop()
    let blocks = try Self.auditRecords(pki, key).filter { $0.kind == .egressBlock }
    #expect(blocks.map { $0.details["event_id"] } == ["e1"], "\(blocks)")
    #expect(blocks.first?.details["sender_uid"] == "0" && blocks.first?.details["sender_pid"] == String(pid))
  }

  @Test func fileDescriptorsSentWithReportsAreNeitherKeptNorTrusted() async throws {
    let pki = try TestPKI()
    let (server, key) = try await Self.server(pki) { _ in }
    let before = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
    // 50 reports, each carrying 10 descriptors (SCM_RIGHTS): 500 fds would be installed in the server if it took them.
    let script = """
      import os, socket, sys
      s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
      s.connect(sys.argv[1])
      fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(10)]
      for _ in range(50):
          socket.send_fds(s, [sys.argv[2].encode()], fds)
      """
    let r = try await ProcessTests.run("/usr/bin/env", ["python3", "-c", script, pki.path("r.sock"), Self.event])
    #expect(r.status == 0, "\(r.stderr)")
    var counted = false
    for _ in 0..<200 where !counted {
      counted = Self.metricsText(server).contains(#"reason="unauthenticated_egress_report"} 50"#)
      if !counted { try await Task.sleep(for: .milliseconds(25)) }
    }
    #expect(counted, "each report with descriptors is dropped and counted")
    let after = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
    #expect(after - before < 200, "descriptors leaked into the server: \(before) -> \(after)")
    try await server.stop()
    #expect(try Self.auditRecords(pki, key).filter { $0.kind == .egressBlock }.isEmpty)
  }

  @Test func reportSenderUIDsAreReadAndCheckedInTheConfig() throws {
    let base = """
      server:
        tls: {certificate_chain: s.pem, private_key: /abs/s.key, client_ca_bundle: ca.pem}
      """ + ConfigTests.auth
    let c = try ServerConfig.parse(
      base + "\negress: {report_socket: r.sock, report_sender_uids: [65533, 0]}\n", baseDirectory: "/etc/p")
    #expect(c.egress.reportSenderUIDs == [65533, 0])
    #expect(try ServerConfig.parse(base, baseDirectory: "/etc/p").egress.reportSenderUIDs == nil)
    for bad in ["[]", "[-1]", "[nobody]", "[4294967295]", "[99999999999]"] {
      #expect(throws: YAMLError.self, "\(bad)") {
        _ = try ServerConfig.parse(base + "\negress: {report_sender_uids: \(bad)}\n", baseDirectory: "/etc/p")
      }
    }
  }
}
