import Foundation
import GRPCCore
import PalisadeClient
import PalisadeProto
import PalisadeTestSupport
import Testing
import X509

/// Every bad credential and bad request gets the right status, and nothing it should not.
@Suite struct RefusalTests {
  // MARK: certificates

  @Test func certificateFromUnrelatedCAFailsTheHandshake() async throws {
    let server = try await TestServer.start()
    let rogue = try server.pki.client(
      "rogue", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/caller")], issuer: server.pki.rogueRoot)
    let error = await rpcError {
      _ = try await withClient(server, cert: rogue.cert, key: rogue.key) { try await $0.serverLive(.init()) }
    }
    #expect(error?.code == .unavailable)
    try await server.stop()
  }

  @Test func expiredClientCertificateFailsTheHandshake() async throws {
    let server = try await TestServer.start()
    let old = try server.pki.client(
      "old", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/old")], notBefore: Date().addingTimeInterval(-7200),
      notAfter: Date().addingTimeInterval(-10))
    let error = await rpcError {
      _ = try await withClient(server, cert: old.cert, key: old.key) { try await $0.serverLive(.init()) }
    }
    #expect(error?.code == .unavailable)
    try await server.stop()
  }

  @Test(arguments: [
    ("no-san", [GeneralName.dnsName("client.example")]),
    ("two-sans", [TestPKI.spiffe("spiffe://palisade.test/a"), TestPKI.spiffe("spiffe://palisade.test/b")]),
    ("https-uri", [GeneralName.uniformResourceIdentifier("https://palisade.test/a")]),
    ("bad-spiffe", [TestPKI.spiffe("spiffe://palisade.test/a/../b")]),
  ])
  func certificateWithoutSingleSPIFFEIDIsUnauthenticated(name: String, sans: [GeneralName]) async throws {
    let server = try await TestServer.start()
    let c = try server.pki.client(name, sans: sans)
    for call in 0..<2 {  // infer and a metadata call both refused
      let error = await rpcError {
        _ = try await withClient(server, cert: c.cert, key: c.key) { client in
          if call == 0 {
            _ = try await client.modelInfer(simpleRequest(raw: true))
          } else {
            _ = try await client.serverMetadata(.init())
          }
        }
      }
      #expect(error?.code == .unauthenticated)
      #expect(error?.message == "client certificate identity refused")
    }
    let metrics = try await adminGet(server, "/metrics").1
    #expect(metrics.contains("palisade_identity_refusals_total"))
    try await server.stop()
  }

  @Test func aClientCannotClaimAnotherConnectionsIdentity() async throws {
    // A refused certificate sends the header that once carried the connection number, naming a good connection:
    // identity now travels only inside the transport (never in a header), so the call stays refused.
    let server = try await TestServer.start()
    let client = try goodClient(server)
    let bad = try server.pki.client("no-san", sans: [.dnsName("x.example")])
    try await withClient(server, client) { good in
      _ = try await good.serverLive(.init())
      for guess in 1...8 {
        let error = await rpcError {
          _ = try await withClient(server, cert: bad.cert, key: bad.key) { client in
            try await client.serverLive(.init(), metadata: ["palisade-internal-connection": "\(guess)"])
          }
        }
        #expect(error?.code == .unauthenticated)
      }
    }
    try await server.stop()
  }

  // MARK: requests

  @Test func unknownModelIsNotFound() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    try await withClient(server, client) { client in
      var r = simpleRequest(raw: true)
      r.modelName = "nope"
      #expect(await rpcError { _ = try await client.modelInfer(r) }?.code == .notFound)
      r.modelName = "simple"
      r.modelVersion = "7"
      #expect(await rpcError { _ = try await client.modelInfer(r) }?.code == .notFound)
      #expect(await rpcError { _ = try await client.modelMetadata(.with { $0.name = "nope" }) }?.code == .notFound)
    }
    try await server.stop()
  }

  @Test func badRequestsAreInvalidArgumentNamingTheInput() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    var wrongType = simpleRequest(raw: false)
    wrongType.inputs[1].datatype = "FP32"
    wrongType.inputs[1].contents = .with { $0.fp32Contents = Array(repeating: 9_876.5, count: 16) }
    var wrongShape = simpleRequest(raw: true)
    wrongShape.inputs[0].shape = [2, 8]
    var shortRaw = simpleRequest(raw: true)
    shortRaw.rawInputContents[1] = Data(count: 60)
    var mixed = simpleRequest(raw: true)
    mixed.inputs[0].contents = .with { $0.intContents = Array(repeating: 1, count: 16) }
    var overflow = simpleRequest(raw: true)
    overflow.inputs[0].shape = [Int64.max / 2, 4]
    var missing = simpleRequest(raw: false)
    missing.inputs.removeLast()
    var extra = simpleRequest(raw: false)
    extra.inputs.append(
      .with {
        $0.name = "INPUT9"
        $0.datatype = "INT32"
        $0.shape = [1]
        $0.contents.intContents = [1]
      })
    let cases: [(Inference_ModelInferRequest, String)] = [
      (wrongType, "INPUT1"), (wrongShape, "INPUT0"), (shortRaw, "INPUT1"), (mixed, "INPUT0"), (overflow, "INPUT0"),
      (missing, "INPUT1"), (extra, "INPUT9"),
    ]
    try await withClient(server, client) { client in
      for (request, input) in cases {
        let error = await rpcError { _ = try await client.modelInfer(request) }
        #expect(error?.code == .invalidArgument, "\(input)")
        #expect(error?.message.contains("'\(input)'") == true, "\(error?.message ?? "")")
        #expect(error?.message.contains("9876") == false)
      }
    }
    try await server.stop()
  }

  @Test func messagesUnderTheLimitPassWhateverTheirFraming() async throws {
    // The size guard parses gRPC length prefixes across HTTP/2 DATA frames: large single messages (split over
    // many frames) and streams of many messages just under the limit must pass untouched.
    let server = try await TestServer.start { $0.server.limits.maxMessageBytes = 300_000 }
    let client = try goodClient(server)
    @Sendable func request(_ bytes: Int, id: String = "") -> Inference_ModelInferRequest {
      .with {
        $0.modelName = "identity_uint8"
        $0.id = id
        $0.inputs = [
          .with {
            $0.name = "IN"
            $0.datatype = "UINT8"
            $0.shape = [1, Int64(bytes)]
          }
        ]
        $0.rawInputContents = [Data((0..<bytes).map { UInt8(truncatingIfNeeded: $0) })]
      }
    }
    try await withClient(server, client) { c in
      let big = try await c.modelInfer(request(250_000))
      #expect(big.rawOutputContents.first?.count == 250_000)
      let replies = try await c.modelStreamInfer(
        requestProducer: { writer in
          for i in 0..<20 { try await writer.write(request(i % 2 == 0 ? 17_000 : 3, id: "\(i)")) }
        },
        onResponse: { response in
          var ids: [String] = []
          for try await m in response.messages {
            #expect(m.errorMessage.isEmpty)
            ids.append(m.inferResponse.id)
          }
          return ids
        })
      #expect(replies == (0..<20).map(String.init))
      // One oversized message in a stream ends that stream with RESOURCE_EXHAUSTED.
      let error = await rpcError {
        _ = try await c.modelStreamInfer(
          requestProducer: { writer in
            try await writer.write(request(10))
            try await writer.write(request(400_000))
          },
          onResponse: { response in for try await _ in response.messages {} })
      }
      #expect(error?.code == .resourceExhausted)
    }
    try await server.stop()
  }

  @Test func messageOverTheSizeLimitIsResourceExhausted() async throws {
    let server = try await TestServer.start { $0.server.limits.maxMessageBytes = 4096 }
    let client = try goodClient(server)
    try await withClient(server, client) { client in
      let big = Inference_ModelInferRequest.with {
        $0.modelName = "identity_uint8"
        $0.inputs = [
          .with {
            $0.name = "IN"
            $0.datatype = "UINT8"
            $0.shape = [1, 8192]
          }
        ]
        $0.rawInputContents = [Data(count: 8192)]
      }
      let error = await rpcError { _ = try await client.modelInfer(big) }
      #expect(error?.code == .resourceExhausted, "\(String(describing: error))")
      // The connection and server stay usable.
      let live = try await client.serverLive(.init()).live
      #expect(live)
    }
    try await server.stop()
  }
}
