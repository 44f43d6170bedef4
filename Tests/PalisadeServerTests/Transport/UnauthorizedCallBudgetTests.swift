import Foundation
import GRPCCore
import PalisadeServer
import PalisadeTestSupport
import Testing

/// The per-principal budget of calls that do no authorized work (`server.http2.unauthorized_calls_per_second`):
/// what it counts, what it refuses, and that a principal's calls with a valid token go on whatever its budget.
/// The floods themselves, with a client that never stops, are in `H2AbuseTests` (`live_flood`, `bad_token_flood`).
@Suite struct UnauthorizedCallBudgetTests {
  static func server() async throws -> TestServer {
    try await TestServer.start { config in
      config.server.http2.unauthorizedCallsPerSecond = 1
      config.server.http2.unauthorizedCallBurst = 5
    }
  }

  /// `palisade_transport_refusals_total{reason}` from the admin port.
  static func refusals(_ server: TestServer, _ reason: String) async throws -> Double {
    let metrics = try await adminGet(server, "/metrics").1
    let prefix = #"palisade_transport_refusals_total{reason="\#(reason)"} "#
    guard let line = metrics.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return 0 }
    return Double(line.dropFirst(prefix.count)) ?? 0
  }

  @Test func tokenExemptCallsBeyondTheBudgetAreRefusedAndTheirConnectionClosed() async throws {
    let server = try await Self.server()
    let caller = try goodClient(server, "prober")
    // Calls with a valid token are never charged: far more than the burst of 5, on one connection.
    let ready = try await withClient(server, caller) { client in
      var ok = 0
      for _ in 0..<40 {
        if try await client.serverReady(.init()).ready { ok += 1 }
      }
      return ok
    }
    #expect(ready == 40)
    // ServerLive needs no token: the burst is served, then the budget refuses (1 a second refills it, so a slow
    // machine may be served one or two more), and the connection that asked is closed.
    let codes = try await withClient(server, caller) { client in
      var codes: [RPCError.Code?] = []
      for _ in 0..<12 { codes.append(await rpcError { _ = try await client.serverLive(.init()) }?.code) }
      return codes
    }
    let served = codes.prefix { $0 == nil }.count
    #expect(served >= 5, "the burst is served: \(codes)")
    #expect(codes.dropFirst(served).first == .resourceExhausted, "then refused RESOURCE_EXHAUSTED: \(codes)")
    #expect(try await Self.refusals(server, "unauthorized_call_flood") >= 1)
    #expect(try await Self.refusals(server, "unauthorized_call_budget") >= 1)
    // The same principal's calls with a token still work on a new connection, its budget spent or not.
    let after = try await withClient(server, caller) { try await $0.serverReady(.init()).ready }
    #expect(after)
    // Another principal has a budget of its own.
    let other = try goodClient(server, "other")
    let live = try await withClient(server, other) { try await $0.serverLive(.init()).live }
    #expect(live)
    try await server.stop()
  }

  /// Forty ServerLive calls in one TLS write: the server reads them in one go. The burst of 5 is served, the next
  /// call is refused and closes the connection, and no later stream of that read is served, answered or charged:
  /// the GOAWAY names the last stream the server took up, and swift-nio-http2 drops the streams above it. (The
  /// handler's own `connection_closing` refusal is the fallback for a stream taken up before the close whose
  /// headers arrive after it.)
  @Test func streamsReadAfterTheConnectionStartedClosingGetNoWork() async throws {
    let server = try await Self.server()
    let attacker = try goodClient(server, "burster")
    let r = try await ProcessTests.run(
      InteropTests.python,
      [
        "\(repositoryRoot)/Tests/Interop/h2_abuse.py", "burst", "--port", "\(server.port)", "--cert", attacker.cert,
        "--key", attacker.key, "--ca", server.pki.path("server-ca.pem"), "--burst", "40", "--close-wait", "10",
      ],
      timeout: .seconds(60))
    let line = try #require(
      r.stdout.split(separator: "\n").first { $0.hasPrefix("BURST ") }, "no result: \(r.stdout)\n\(r.stderr)")
    let result = try #require(
      try JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any], "\(line)")
    let statuses = result["statuses"] as? [String: Int] ?? [:]
    // 1 a second refills the budget, so a slow machine may serve one more.
    let served = statuses["0"] ?? 0
    #expect(served >= 5 && served <= 6, "the burst is served, no more: \(result)")
    #expect(statuses["8"] == 1, "one call is refused RESOURCE_EXHAUSTED: \(result)")
    #expect(
      statuses.keys.allSatisfy { ["0", "8", "14"].contains($0) },
      "the rest get no answer, or UNAVAILABLE: \(result)")
    #expect(result["closed"] as? Bool == true, "the connection is closed: \(result)")
    #expect((result["goaways"] as? [Int] ?? []).first == 11, "GOAWAY(ENHANCE_YOUR_CALM) first: \(result)")
    #expect(try await Self.refusals(server, "unauthorized_call_budget") == 1, "one call met the budget")
    #expect(try await Self.refusals(server, "unauthorized_call_flood") == 1, "one connection was closed for it")
    try await server.stop()
  }

  @Test func callsRefusedForTheirTokenAreChargedAndCloseTheConnectionWhenTheBudgetIsSpent() async throws {
    let server = try await Self.server()
    let caller = try goodClient(server, "guesser")
    let codes = try await withClient(server, cert: caller.cert, key: caller.key, token: "not.a.token") { client in
      var codes: [RPCError.Code?] = []
      for _ in 0..<12 { codes.append(await rpcError { _ = try await client.serverReady(.init()) }?.code) }
      return codes
    }
    // Each is answered UNAUTHENTICATED (the refusal is the pipeline's, not the budget's); once the budget is
    // spent, the connection is closed after the answer, so a later call may meet the closing connection.
    #expect(codes.first == .unauthenticated && codes.allSatisfy { $0 == .unauthenticated || $0 == .unavailable })
    #expect(try await Self.refusals(server, "unauthorized_call_flood") >= 1, "\(codes)")
    // With its budget spent, the principal's calls with a valid token are still served.
    let ready = try await withClient(server, caller) { try await $0.serverReady(.init()).ready }
    #expect(ready)
    try await server.stop()
  }
}
