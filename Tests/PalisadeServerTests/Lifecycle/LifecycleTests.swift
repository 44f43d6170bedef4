import Foundation
import GRPCCore
import PalisadeProto
import PalisadeTestSupport
import Testing

@Suite struct LifecycleTests {
  @Test func gracefulShutdownDrainsInFlightCalls() async throws {
    let (started, startedContinuation) = AsyncStream<Void>.makeStream()
    // A generous grace period: on a loaded CI machine the 1.5 s call must not outlast it.
    let server = try await TestServer.start(models: [
      SlowModel(delay: .milliseconds(1500), started: startedContinuation)
    ]) {
      $0.server.shutdownGraceSeconds = 60
    }
    let client = try goodClient(server)
    let request = Inference_ModelInferRequest.with {
      $0.modelName = "slow"
      $0.inputs = [
        .with {
          $0.name = "IN"
          $0.datatype = "FP32"
          $0.shape = [1]
          $0.contents.fp32Contents = [4]
        }
      ]
    }
    let inFlight = Task {
      try await withClient(server, client) { try await $0.modelInfer(request) }
    }
    // Shut down only once the call is inside the model.
    for await _ in started { break }
    server.runtime.shutdown()
    let response = try await inFlight.value
    #expect(response.outputs.first?.contents.fp32Contents == [4])
    try await server.wait()
    // After shutdown nothing accepts.
    let after = await rpcError { _ = try await withClient(server, client) { try await $0.serverLive(.init()) } }
    #expect(after?.code == .unavailable)
  }

  @Test func adminEndpointsReportHealthReadinessAndMetrics() async throws {
    let server = try await TestServer.start(models: [AddSubModel()], required: ["simple", "later"])
    #expect(try await adminGet(server, "/healthz").0 == 200)
    let (status, body) = try await adminGet(server, "/readyz")
    #expect(status == 503)
    #expect(body.contains("later"))
    let client = try goodClient(server)
    try await withClient(server, client) { client in
      #expect(try await !client.serverReady(.init()).ready)
      _ = try await client.modelInfer(simpleRequest(raw: true))
      _ = try? await client.modelInfer(.with { $0.modelName = "nope" })
    }
    server.runtime.repository.register(AddSubModel(name: "later"))
    #expect(try await adminGet(server, "/readyz").0 == 200)
    let metrics = try await adminGet(server, "/metrics").1
    #expect(metrics.contains(#"palisade_grpc_requests_total{rpc="ModelInfer",code="OK"} 1"#))
    #expect(metrics.contains(#"palisade_grpc_requests_total{rpc="ModelInfer",code="NOT_FOUND"} 1"#))
    #expect(metrics.contains("palisade_grpc_request_duration_seconds_bucket"))
    #expect(try await adminGet(server, "/nope").0 == 404)
    try await server.stop()
  }
}
