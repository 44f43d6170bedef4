import Crypto
import Foundation
import PalisadeAudit
import PalisadeServer
import PalisadeTestSupport
import Testing

/// The egress sidecar killed while audit checkpoints ship (docs/reliability.md, "Faults"): a real `palisade
/// egress` process between the server and a collector, SIGKILLed while the collector holds a checkpoint post
/// unanswered. Nothing reaches the collector while the sidecar is down (the server has no other way out);
/// after a restart the post is repeated and the rest follow; every post carries its sequence number (the tree
/// size) and an idempotency key, so the collector keeps each checkpoint once and misses none.
@Suite(.serialized) struct EgressFaultTests {
  @Test func sidecarKilledWhileCheckpointsShipThenRestarted() async throws {
    let pki = try TestPKI()
    // The collector: logs every post (one JSON line, before answering) and holds its first answer back 3 s.
    let received = pki.path("collected.jsonl")
    let script =
      """
      import http.server, json, sys, time
      first = [True]
      class H(http.server.BaseHTTPRequestHandler):
          def do_POST(self):
              body = self.rfile.read(int(self.headers.get('content-length', 0)))
              line = {'size': self.headers.get('x-palisade-checkpoint-size'), 'key': self.headers.get('idempotency-key'),
                      'note': body.decode()}
              with open(sys.argv[1], 'a') as f:
                  f.write(json.dumps(line) + '\\n')
              if first[0]:
                  first[0] = False
                  time.sleep(3)
              try:
                  self.send_response(204); self.end_headers()
              except OSError:
                  pass
          def log_message(self, *a): pass
          def handle_error(self, *a): pass
      s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), H)
      s.handle_error = lambda *a: None
      print(s.server_address[1], flush=True)
      s.serve_forever()
      """
    let (collector, collectorPort) = try ShippingRig.collector(script, file: received)
    defer { kill(collector.processIdentifier, SIGKILL) }

    let rig = try await ShippingRig.server(pki, collectorPort: collectorPort)
    let server = rig.server
    let key = rig.auditKey
    func posts() -> [[String: String]] {
      let text = (try? String(contentsOfFile: received, encoding: .utf8)) ?? ""
      return text.split(separator: "\n").compactMap {
        try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String]
      }
    }
    func call() async throws {
      _ = try await withClient(server, try goodClient(server)) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }

    var sidecar = try await rig.sidecar()
    defer { if sidecar.isRunning { kill(sidecar.processIdentifier, SIGKILL) } }
    try await call()
    // The first post reaches the collector, which holds its answer: kill the sidecar now, mid-shipping.
    for _ in 0..<400 where posts().isEmpty { try await Task.sleep(for: .milliseconds(25)) }
    #expect(posts().count == 1)
    kill(sidecar.processIdentifier, SIGKILL)
    sidecar.waitUntilExit()

    // While it is down, records and checkpoints go on; nothing reaches the collector any other way.
    for _ in 0..<3 { try await call() }
    try await Task.sleep(for: .seconds(3))
    #expect(posts().count == 1, "nothing left while the sidecar was down: \(posts())")
    let latestDuringOutage = try #require(server.runtime.auditor.latestSignedCheckpoint)
    #expect(latestDuringOutage.treeSize >= 4)

    // Restarted: shipping resumes; the held post is repeated, with the same key.
    sidecar = try await rig.sidecar()
    var latest = try #require(server.runtime.auditor.latestSignedCheckpoint)
    let deadline = ContinuousClock.now + .seconds(60)
    while ContinuousClock.now < deadline {
      latest = try #require(server.runtime.auditor.latestSignedCheckpoint)
      if posts().contains(where: { $0["size"] == String(latest.treeSize) }) { break }
      try await Task.sleep(for: .milliseconds(100))
    }
    try await server.stop()
    let all = posts()
    #expect(all.contains { $0["size"] == String(latest.treeSize) }, "the newest checkpoint arrived: \(all)")
    let firstKey = try #require(all.first?["key"])
    #expect(all.filter { $0["key"] == firstKey }.count >= 2, "the post whose answer was lost was sent again: \(all)")

    // Every post: a checkpoint that verifies, its size header is its tree size, its key the note's SHA-256.
    // Deduplicated by key, the sizes only grow: nothing arrives twice, nothing is out of order.
    var seen = Set<String>()
    var lastSize: UInt64 = 0
    for post in all {
      let note = try #require(post["note"])
      let checkpoint = try SignedCheckpoint.verify(note: note, key: key.verifyingKey)
      #expect(post["size"] == String(checkpoint.treeSize))
      let digest = SHA256.hash(data: Array(note.utf8)).map { String(format: "%02x", $0) }.joined()
      #expect(post["key"] == digest)
      guard seen.insert(digest).inserted else { continue }
      #expect(checkpoint.treeSize > lastSize, "sizes grow from one distinct checkpoint to the next")
      lastSize = checkpoint.treeSize
    }
    #expect(lastSize == latest.treeSize)
  }
}
