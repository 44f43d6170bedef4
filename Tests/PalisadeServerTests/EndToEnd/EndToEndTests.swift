import Foundation
import GRPCCore
import PalisadeCore
import PalisadeProto
import PalisadeTestSupport
import Testing

/// The whole server over real mTLS on loopback, with test models.
@Suite struct EndToEndTests {
  @Test func coreRPCsWork() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    try await withClient(server, client) { client in
      #expect(try await client.serverLive(.init()).live)
      #expect(try await client.serverReady(.init()).ready)
      #expect(try await client.modelReady(.with { $0.name = "simple" }).ready)
      #expect(try await !client.modelReady(.with { $0.name = "absent" }).ready)
      let meta = try await client.serverMetadata(.init())
      #expect(meta.name == "palisade")
      #expect(meta.extensions.contains("binary_tensor_data"))
      let model = try await client.modelMetadata(.with { $0.name = "simple" })
      #expect(model.inputs.map(\.name) == ["INPUT0", "INPUT1"])
      #expect(model.outputs.first?.datatype == "INT32")
      #expect(model.versions == ["1"])
    }
    try await server.stop()
  }

  @Test(arguments: [false, true])
  func inferTypedAndRaw(raw: Bool) async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    let response = try await withClient(server, client) { try await $0.modelInfer(simpleRequest(raw: raw)) }
    #expect(response.id == "req-1")
    #expect(response.modelName == "simple")
    #expect(response.outputs.map(\.name) == ["OUTPUT0", "OUTPUT1"])
    if raw {
      #expect(response.rawOutputContents.count == 2)
      let sum = response.rawOutputContents[0].withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
      #expect(sum == (0..<16).map { Int32($0) + 1 })
    } else {
      #expect(response.rawOutputContents.isEmpty)
      #expect(response.outputs[1].contents.intContents == (0..<16).map { Int32($0) - 1 })
    }
    try await server.stop()
  }

  @Test func requestedOutputsAreFiltered() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    var request = simpleRequest(raw: false)
    request.outputs = [.with { $0.name = "OUTPUT1" }]
    let filtered = request
    let response = try await withClient(server, client) { try await $0.modelInfer(filtered) }
    #expect(response.outputs.map(\.name) == ["OUTPUT1"])
    request.outputs = [.with { $0.name = "NOPE" }]
    let unknown = request
    let error = await rpcError { _ = try await withClient(server, client) { try await $0.modelInfer(unknown) } }
    #expect(error?.code == .invalidArgument)
    try await server.stop()
  }

  @Test(arguments: DataType.allCases)
  func everyDatatypeRoundTrips(datatype: DataType) async throws {
    let server = try await TestServer.start(models: [IdentityModel(datatype: datatype)])
    let client = try goodClient(server)
    let raw: Data
    switch datatype {
    case .bytes: raw = Data([3, 0, 0, 0, 0x61, 0x62, 0x63, 0, 0, 0, 0])
    case .bool: raw = Data([1, 0])
    default: raw = Data((0..<(2 * datatype.elementSize!)).map { UInt8($0 + 1) })
    }
    let request = Inference_ModelInferRequest.with {
      $0.modelName = "identity_\(datatype.rawValue.lowercased())"
      $0.inputs = [
        .with {
          $0.name = "IN"
          $0.datatype = datatype.rawValue
          $0.shape = [1, 2]
        }
      ]
      $0.rawInputContents = [raw]
    }
    let response = try await withClient(server, client) { try await $0.modelInfer(request) }
    #expect(response.rawOutputContents == [raw])
    #expect(response.outputs.first?.datatype == datatype.rawValue)
    try await server.stop()
  }

  @Test func streamInferAnswersEveryRequestAndReportsErrorsInBand() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    let responses = try await withClient(server, client) { client in
      try await client.modelStreamInfer(
        requestProducer: { writer in
          try await writer.write(simpleRequest(raw: true))
          try await writer.write(
            .with {
              $0.modelName = "absent"
              $0.id = "bad"
            })
          try await writer.write(simpleRequest(raw: false))
        },
        onResponse: { response in
          var out: [Inference_ModelStreamInferResponse] = []
          for try await message in response.messages { out.append(message) }
          return out
        })
    }
    #expect(responses.count == 3)
    #expect(responses[0].errorMessage.isEmpty)
    #expect(responses[1].errorMessage.contains("NOT_FOUND"))
    #expect(responses[1].inferResponse.id == "bad")
    #expect(responses[2].inferResponse.outputs.count == 2)
    try await server.stop()
  }

  @Test func modelStatisticsCountCalls() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    let stats = try await withClient(server, client) { client in
      _ = try await client.modelInfer(simpleRequest(raw: true))
      _ = try? await client.modelInfer(.with { $0.modelName = "simple" })
      return try await client.modelStatistics(.with { $0.name = "simple" })
    }
    #expect(stats.modelStats.first?.inferenceStats.success.count == 1)
    #expect(stats.modelStats.first?.inferenceStats.fail.count == 1)
    try await server.stop()
  }

  @Test func repositoryIndexListsModelsAndChangesAreRefused() async throws {
    let server = try await TestServer.start(models: [AddSubModel()])
    let client = try goodClient(server)
    try await withClient(server, client) { client in
      let index = try await client.repositoryIndex(.init())
      #expect(index.models.map(\.name) == ["simple"])
      #expect(index.models.first?.state == "READY")
      let unload = await rpcError { _ = try await client.repositoryModelUnload(.with { $0.modelName = "simple" }) }
      #expect(unload?.code == .permissionDenied)
      #expect(try await client.modelReady(.with { $0.name = "simple" }).ready)
    }
    try await server.stop()
  }
}
