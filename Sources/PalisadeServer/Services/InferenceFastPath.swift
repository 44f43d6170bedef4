import Foundation
import GRPCCore
public import Logging
import PalisadeCore
public import PalisadeProto
public import PalisadeTransport
public import SwiftProtobuf

extension MessageBytes: SwiftProtobufContiguousBytes {}

/// `ModelInfer` served on the transport's fast path (``FastUnaryHandler``): the request is decoded straight from
/// the bytes that arrived, the response serialized straight into the buffer that is sent.
///
/// It runs the same stages, in the same order, as the grpc-swift path does for every other RPC: the call is
/// observed (status metric, latency, error mapping through ``StatusMapping``), the connection's identity becomes the
/// ``CallContext`` and the token is verified (``CallAuthenticator``, as the interceptors do), then
/// ``InferencePipeline`` authorises, resolves, validates, screens, schedules, computes, hardens and audits. Only the
/// per-call machinery of grpc-swift (interceptor chain, async sequences, a task hop per part) is skipped.
public struct InferenceFastPath: FastUnaryHandler {
  public static let modelInfer = "/inference.GRPCInferenceService/ModelInfer"
  static let rpc = "ModelInfer"
  public let paths = [Self.modelInfer]

  let authenticator: CallAuthenticator
  let pipeline: InferencePipeline
  let metrics: ServerMetrics
  let logger: Logger

  public init(authenticator: CallAuthenticator, pipeline: InferencePipeline, metrics: ServerMetrics, logger: Logger) {
    self.authenticator = authenticator
    self.pipeline = pipeline
    self.metrics = metrics
    self.logger = logger
  }

  public func handle(_ call: FastUnaryCall) async -> FastUnaryResponse {
    let start = ContinuousClock.now
    do {
      var context = try await authenticator.identify(call.connection, rpc: Self.rpc)
      try await authenticator.authenticate(&context, authorization: call.header("authorization"), rpc: Self.rpc)
      let request: Inference_ModelInferRequest
      do {
        request = try Inference_ModelInferRequest(serializedBytes: MessageBytes(call.message))
      } catch {
        throw PalisadeError(.invalidArgument, "the request is not a valid ModelInferRequest message")
      }
      let response = try await pipeline.infer(request, call: context, rpc: Self.rpc)
      let bytes: MessageBytes = try response.serializedBytes()
      metrics.recordRPC(method: Self.rpc, code: "OK", duration: ContinuousClock.now - start)
      return .message(bytes.buffer)
    } catch {
      let status = StatusMapping.rpcError(for: error, logger: logger.with(rpc: Self.rpc, peer: call.connection.remoteAddress))
      metrics.recordRPC(method: Self.rpc, code: StatusMapping.codeName(status.code), duration: ContinuousClock.now - start)
      return .failure(status.code, status.message)
    }
  }
}
