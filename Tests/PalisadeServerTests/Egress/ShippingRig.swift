import Foundation
import PalisadeAudit
import PalisadeServer
import PalisadeTestSupport
import Testing

/// A server whose signed audit checkpoints ship through a real `palisade egress` process to a collector outside
/// (a small Python HTTP server): the parts the egress integration and fault tests share.
enum ShippingRig {
  /// A collector that appends every POST body to `argv[1]`, then `\n--\n`, and answers 204.
  static let appendingCollector = """
    import http.server, sys
    class H(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get('content-length', 0)))
            open(sys.argv[1], 'ab').write(body + b'\\n--\\n')
            self.send_response(204); self.end_headers()
        def log_message(self, *a): pass
    s = http.server.HTTPServer(('127.0.0.1', 0), H)
    print(s.server_address[1], flush=True)
    s.serve_forever()
    """

  /// Starts the Python collector `script` with `file` as its argument; it prints its port first.
  static func collector(_ script: String, file: String) throws -> (Process, Int) {
    let collector = Process()
    collector.executableURL = URL(fileURLWithPath: InteropTests.python)
    collector.arguments = ["-c", script, file]
    let portPipe = Pipe()
    collector.standardOutput = portPipe
    collector.standardError = FileHandle.nullDevice
    try collector.run()
    let portLine = String(decoding: portPipe.fileHandleForReading.availableData, as: UTF8.self)
    let port = Int(portLine.trimmingCharacters(in: .whitespacesAndNewlines))
    if port == nil { kill(collector.processIdentifier, SIGKILL) }
    return (collector, try #require(port, "the collector did not print its port: \(portLine)"))
  }

  /// A started server with an audit log (origin `palisade.test/audit`, signed with `auditKey`) that ships checkpoints
  /// to the collector on `collectorPort` through the sidecar's Unix socket, and how to start that sidecar.
  struct Server {
    let server: TestServer
    let auditKey: AuditSigningKey
    let pki: TestPKI
    let proxySocket: String
    let reports: String
    let collectorPort: Int

    /// Starts a `palisade egress` process that lets POSTs to the collector's /checkpoints/ through and reports
    /// blocks to the server's socket (waited for first: the server binds it). Call again to restart it.
    func sidecar() async throws -> Process {
      for _ in 0..<100 where !FileManager.default.fileExists(atPath: reports) {
        try await Task.sleep(for: .milliseconds(20))
      }
      let config = try pki.write(
        "egress.yaml",
        """
        listen: {host: 127.0.0.1, port: 0, unix_socket: \(proxySocket)}
        admin: {enabled: false}
        report_socket: \(reports)
        destinations:
          - {name: collector, scheme: http, host: localhost, port: \(collectorPort), methods: [POST], path_prefixes: [/checkpoints/], allow_private: true}
        """)
      let sidecar = Process()
      sidecar.executableURL = URL(fileURLWithPath: ProcessTests.binary)
      sidecar.arguments = ["egress", "--config", config]
      sidecar.standardError = FileHandle.nullDevice
      try sidecar.run()
      for _ in 0..<200 where !FileManager.default.fileExists(atPath: proxySocket) {
        try await Task.sleep(for: .milliseconds(25))
      }
      return sidecar
    }
  }

  static func server(
    _ pki: TestPKI, collectorPort: Int, checkpointEveryRecords: Int = 1, checkpointIntervalSeconds: Int = 1
  ) async throws -> Server {
    let key = try AuditSigningKey.generate(name: "palisade.test/audit")
    let keyPath = try pki.write("audit.key", key.privateKeyPEM, mode: 0o600)
    let proxySocket = pki.path("egress.sock")
    let reports = pki.path("reports.sock")
    let server = try await TestServer.start(pki: pki, models: [AddSubModel()]) {
      var audit = ServerConfig.Audit(directory: pki.path("audit"), key: keyPath)
      audit.checkpointEveryRecords = checkpointEveryRecords
      audit.checkpointIntervalSeconds = checkpointIntervalSeconds
      audit.origin = "palisade.test/audit"
      $0.audit = audit
      $0.egress = .init(
        reportSocket: reports, proxy: "unix:\(proxySocket)",
        checkpointURL: "http://localhost:\(collectorPort)/checkpoints/")
    }
    return Server(
      server: server, auditKey: key, pki: pki, proxySocket: proxySocket, reports: reports,
      collectorPort: collectorPort)
  }
}
