import Foundation
import GRPCCore
import PalisadeProto
import PalisadeTestSupport
import Testing

/// `ModelStreamInfer` on the transport's fast path: order, back-pressure, in-band errors, deadlines.
@Suite struct StreamFastPathTests {
  @Test func manyPipelinedMessagesAreAnsweredInOrder() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    // Far more than the messages the transport lets wait before it stops reading: back-pressure, not loss.
    let n = 300
    let ids = try await withClient(server, client) { client in
      try await client.modelStreamInfer(
        requestProducer: { writer in
          for i in 0..<n {
            var request = simpleRequest(raw: i % 2 == 0)
            request.id = "m\(i)"
            if i % 50 == 7 { request.modelName = "absent" }
            try await writer.write(request)
          }
        },
        onResponse: { response in
          var ids: [String] = []
          for try await message in response.messages {
            ids.append(message.inferResponse.id)
            #expect(message.errorMessage.isEmpty == !(ids.count % 50 == 8), "\(message.errorMessage)")
          }
          return ids
        })
    }
    #expect(ids == (0..<n).map { "m\($0)" })
    try await server.stop()
  }

  @Test func aStreamPastItsDeadlineEndsDeadlineExceeded() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    let error = await rpcError {
      try await withClient(server, client) { client in
        var options = CallOptions.defaults
        options.timeout = .milliseconds(500)
        try await client.modelStreamInfer(
          options: options,
          requestProducer: { writer in
            try await writer.write(simpleRequest(raw: true))
            try await Task.sleep(for: .seconds(5))
          },
          onResponse: { response in for try await _ in response.messages {} })
      }
    }
    #expect(error?.code == .deadlineExceeded)
    try await server.stop()
  }

  @Test func aStreamWithoutATokenIsRefused() async throws {
    let server = try await TestServer.start()
    let client = try goodClient(server)
    let anonymous = TestClient(cert: client.cert, key: client.key, token: nil, issued: client.issued)
    let error = await rpcError {
      try await withClient(server, anonymous) { client in
        try await client.modelStreamInfer(
          requestProducer: { writer in try await writer.write(simpleRequest(raw: true)) },
          onResponse: { response in for try await _ in response.messages {} })
      }
    }
    #expect(error?.code == .unauthenticated)
    try await server.stop()
  }
}
