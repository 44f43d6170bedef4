import Foundation
import PalisadeTestSupport
import Testing

/// HTTP/2 and TLS abuse against a real `palisade serve` process (issue 15): `Tests/Interop/h2_abuse.py` runs a
/// well-behaved caller, then sixteen attacks for ~2.5 s each (the short version of `Benchmarks/h2_abuse.sh`).
///
/// Asserted strictly for every attack: the server survives, every abusive connection is closed, HTTP/2 attacks
/// receive GOAWAY(ENHANCE_YOUR_CALM), the metric for that attack class increases, and the server's RSS stays
/// within its baseline + 200 MiB. The caller's p99 (issue bound: ≤ 3x its baseline) is asserted only with a wide
/// margin: this runs on a debug build, on a 2-core CI machine shared with other jobs, with the attacker, the caller
/// and the server competing for the same two cores, so a few slow calls can come from the client side or the
/// scheduler rather than from the server; the release-build figures are in docs/reliability.md.
@Suite(.serialized) struct H2AbuseTests {
  static let attacks = [
    "rapid_reset", "continuation", "hpack_bomb", "trailer_bomb", "settings_flood", "ping_flood", "streams",
    "zero_window", "live_flood", "bad_token_flood", "idle",
    "slow_handshake", "slowloris_grpc", "slowloris_admin", "admin_unread",
    "admin_flood",
  ]
  static let http2Attacks: Set = [
    "rapid_reset", "continuation", "hpack_bomb", "trailer_bomb", "settings_flood", "ping_flood", "streams",
    "zero_window", "live_flood", "bad_token_flood",
  ]

  @Test func http2AndTLSAttacksAreCutOffCountedAndBounded() async throws {
    let pki = try TestPKI()
    try pki.write("jwks.json", pki.jwksJSON())
    try pki.write("policy.yaml", TestServer.allowAllPolicy)
    // Short timeouts so that each attack ends within its few seconds; the flood limits keep their defaults, but
    // for the unauthorized-call burst: a debug build under CI load serves a few hundred calls a second, and the
    // default 1,000 (over a 200/s refill) could outlast the attack window.
    let config = try pki.write(
      "palisade.yaml",
      """
      server:
        listen: "127.0.0.1:0"
        tls:
          certificate_chain: server.pem
          private_key: server.key
          client_ca_bundle: ca-bundle.pem
        shutdown_grace_seconds: 2
        connection:
          handshake_timeout_seconds: 2
          keepalive_seconds: 2
          keepalive_timeout_seconds: 2
          max_idle_seconds: 3
        http2:
          write_stall_timeout_seconds: 2
          unauthorized_call_burst: 300
      auth:
        audience: \(TestPKI.audience)
        issuers:
          - issuer: \(TestPKI.issuerName)
            jwks: jwks.json
      policy:
        file: policy.yaml
      admin:
        listen: "127.0.0.1:0"
        request_timeout_seconds: 2
      """)
    let client = try pki.client("steady", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/steady")])
    // The attackers are another workload: the unauthorized-call budget is per principal, and the caller's
    // ServerLive every 10 ms is its own.
    let attacker = try pki.client("attacker", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/attacker")])
    let r = try await ProcessTests.run(
      InteropTests.python,
      [
        "\(repositoryRoot)/Tests/Interop/h2_abuse.py", "run", "--bin", ProcessTests.binary, "--config", config,
        "--log", pki.path("server.log"), "--cert", client.cert, "--key", client.key, "--ca", pki.path("ca-bundle.pem"),
        "--attacker-cert", attacker.cert, "--attacker-key", attacker.key, "--duration", "2.5", "--baseline", "4",
        "--slow-connections", "20", "--close-wait", "6",
        "--attacks", Self.attacks.joined(separator: ","),
      ],
      timeout: .seconds(300))
    var results: [String: [String: Any]] = [:]
    for line in r.stdout.split(separator: "\n") where line.hasPrefix("RESULT ") {
      let parts = line.split(separator: " ", maxSplits: 2)
      guard parts.count == 3,
        let object = try JSONSerialization.jsonObject(with: Data(parts[2].utf8)) as? [String: Any]
      else { continue }
      results[String(parts[1])] = object
    }
    let log = (try? String(contentsOfFile: pki.path("server.log"), encoding: .utf8)) ?? ""
    guard let baseline = results["baseline"] else {
      Issue.record("no baseline: \(r.stdout)\n\(r.stderr)\n\(log.suffix(4000))")
      return
    }
    let baseP99 = baseline["p99_ms"] as? Double ?? 0
    #expect(baseP99 > 0, "the caller was served before the attacks: \(baseline)")
    print(r.stdout)  // the table, for the CI log

    for attack in Self.attacks {
      guard let result = results[attack] else {
        Issue.record("no result for \(attack): \(r.stdout)\n\(r.stderr)")
        continue
      }
      #expect(result["server_alive"] as? Bool == true, "\(attack): the server survives")
      // (3) every abusive connection is closed, HTTP/2 ones with GOAWAY(ENHANCE_YOUR_CALM).
      let connections = result["connections"] as? Int ?? 0
      let closed = result["closed_connections"] as? Int ?? -1
      #expect(connections > 0 && closed == connections, "\(attack): closed \(closed) of \(connections): \(result)")
      if Self.http2Attacks.contains(attack) {
        let goaways = result["goaways"] as? [String: Int] ?? [:]
        #expect((goaways["11"] ?? 0) > 0, "\(attack): GOAWAY(ENHANCE_YOUR_CALM) received: \(result)")
      }
      // (4) a metric counts it.
      let counted = result["counted"] as? [String: Double] ?? [:]
      #expect(counted.values.reduce(0, +) > 0, "\(attack): \(result["metric"] ?? "") counted: \(counted)")
      // (2) memory.
      let growth = result["rss_growth_mib"] as? Double ?? .infinity
      #expect(growth <= 200, "\(attack): RSS grew \(growth) MiB")
      // (1) the caller, generously (see the suite's comment): still served, p99 within 3x baseline + 1 s.
      let caller = result["caller"] as? [String: Any] ?? [:]
      let p99 = caller["p99_ms"] as? Double
      #expect(p99 != nil, "\(attack): the well-behaved caller was served during the attack: \(caller)")
      if let p99 {
        #expect(p99 <= 3 * baseP99 + 1000, "\(attack): caller p99 \(p99) ms vs baseline \(baseP99) ms")
      }
    }
  }
}
