import Foundation
import GRPCCore
import PalisadeCore
import PalisadeProto
import PalisadeServer
import PalisadeTestSupport
import Testing

/// Unloaded and hot-swapped model versions leave nothing behind: the scheduler's queues and breakers, the
/// screener's monitors and the statistics are keyed by version and are released with it, after the calls still
/// holding the old version finished on it; then the model itself is freed.
@Suite struct ModelReleaseTests {
  func request(version: String = "") -> Inference_ModelInferRequest {
    .with {
      $0.modelName = "double"
      $0.modelVersion = version
      $0.inputs = [
        .with {
          $0.name = "IN"
          $0.datatype = "FP32"
          $0.shape = [1, 4]
          $0.contents.fp32Contents = [1, 2, 3, 4]
        }
      ]
    }
  }

  /// Waits (up to 5 s) until `condition` holds; model memory is freed when the last task holding it ends.
  func eventually(_ condition: () -> Bool) async throws -> Bool {
    for _ in 0..<500 {
      if condition() { return true }
      try await Task.sleep(for: .milliseconds(10))
    }
    return condition()
  }

  @Test func swappedAndUnloadedVersionsAreReleased() async throws {
    var v1: DoublingModel? = DoublingModel(version: "1", gated: true)
    var v2: DoublingModel? = DoublingModel(version: "2")
    weak let weakV1 = v1
    weak let weakV2 = v2
    let server = try await TestServer.start(models: v1.map { [$0] } ?? []) {
      $0.scheduling.modelMaxConcurrentExecutions = 1
      $0.scheduling.batching = false
    }
    let caller = try goodClient(server)
    let repository = server.runtime.repository

    // Calls on v1, held in the model (running) and behind it (queued) while v2 replaces it.
    let calls = (0..<4).map { _ in
      Task {
        try await withClient(server, caller) { [request = request(version: "1")] c in try await c.modelInfer(request) }
      }
    }
    // One call runs (held by the gate), three wait in the queue.
    for _ in 0..<500 {
      if v1?.executions.count == 1,
        try await adminGet(server, "/metrics").1.contains(#"palisade_queue_depth{model="double"} 3"#)
      {
        break
      }
      try await Task.sleep(for: .milliseconds(10))
    }
    #expect(server.runtime.modelVersionStates.scheduler == 1)
    if let v2 { repository.register(v2) }
    repository.remove(name: "double", version: "1")
    // v1 left: its queue was dropped from the scheduler, but the calls holding it still finish on it.
    v1?.setGate(open: true)
    for call in calls {
      let response = try await call.value
      #expect(response.modelVersion == "1")
      #expect(response.outputs.first?.contents.fp32Contents == [2, 4, 6, 8])
    }
    v1 = nil
    let onV2 = try await withClient(server, caller) { [request = request()] c in try await c.modelInfer(request) }
    #expect(onV2.modelVersion == "2")
    #expect(
      try await eventually { server.runtime.modelVersionStates == (1, 1, 1) }, "\(server.runtime.modelVersionStates)")
    #expect(try await eventually { weakV1 == nil }, "the replaced version is freed")

    // Unloading the model releases the rest.
    repository.remove(name: "double")
    v2 = nil
    #expect(
      try await eventually { server.runtime.modelVersionStates == (0, 0, 0) }, "\(server.runtime.modelVersionStates)")
    #expect(try await eventually { weakV2 == nil }, "the unloaded version is freed")
    let metrics = try await adminGet(server, "/metrics").1
    #expect(metrics.contains(#"palisade_model_version_states{cache="scheduler"} 0"#), "\(metrics)")
    #expect(metrics.contains(#"palisade_model_version_states{cache="screening"} 0"#))
    let gone = await rpcError {
      _ = try await withClient(server, caller) { [request = request()] c in try await c.modelInfer(request) }
    }
    #expect(gone?.code == .notFound)
    try await server.stop()
  }
}
