import Foundation
import GRPCCore
public import Logging
import PalisadeCore
import PalisadeProto
public import PalisadeTransport
public import NIOCore
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
  /// Nil when tracing is off: then no tracer call is made.
  let tracer: CallTracer?

  public init(
    authenticator: CallAuthenticator, pipeline: InferencePipeline, metrics: ServerMetrics, logger: Logger,
    tracer: CallTracer? = nil
  ) {
    self.authenticator = authenticator
    self.pipeline = pipeline
    self.metrics = metrics
    self.logger = logger
    self.tracer = tracer
  }

  public func handle(_ call: FastUnaryCall) async -> FastUnaryResponse {
    let start = ContinuousClock.now
    let spans = tracer?.startCall(rpc: Self.rpc, traceparent: call.header("traceparent"))
    do {
      var context = try await authenticator.identify(call.connection, rpc: Self.rpc)
      spans?.identified(requestID: context.requestID)
      try await authenticator.authenticate(&context, authorization: call.header("authorization"), rpc: Self.rpc)
      spans?.ended(.authenticate)
      let request: Inference_ModelInferRequest
      do {
        request = try Inference_ModelInferRequest(serializedBytes: MessageBytes(call.message))
      } catch {
        let refused = PalisadeError(.invalidArgument, "the request is not a valid ModelInferRequest message")
        spans?.failed(refused, stage: .validate)
        throw refused
      }
      let response = try await pipeline.infer(request, call: context, rpc: Self.rpc, spans: spans)
      let bytes: MessageBytes = try response.serializedBytes()
      metrics.recordRPC(method: Self.rpc, code: "OK", duration: ContinuousClock.now - start)
      spans?.finish(nil)
      return .message(bytes.buffer)
    } catch {
      let status = StatusMapping.rpcError(
        for: error, logger: logger.with(rpc: Self.rpc, peer: call.connection.remoteAddress))
      metrics.recordRPC(
        method: Self.rpc, code: StatusMapping.codeName(status.code), duration: ContinuousClock.now - start)
      spans?.finish(status)
      return .failure(status.code, status.message)
    }
  }
}

/// `ModelStreamInfer` on the transport's fast path (``FastStreamHandler``): the stream is authenticated once at
/// its start (``CallAuthenticator``, as the interceptors would), its token re-checked before every message and on
/// a timer (``StreamCredentials``: an expired token or a retired key ends the stream UNAUTHENTICATED), and every
/// message runs the whole ``InferencePipeline``. As in Triton, a failed request yields a response whose
/// `error_message` names the status, and the stream goes on.
public struct InferenceStreamFastPath: FastStreamHandler {
  public static let modelStreamInfer = "/inference.GRPCInferenceService/ModelStreamInfer"
  static let rpc = "ModelStreamInfer"
  public let paths = [Self.modelStreamInfer]

  let authenticator: CallAuthenticator
  let credentials: StreamCredentials
  let pipeline: InferencePipeline
  let metrics: ServerMetrics
  let logger: Logger
  /// Nil when tracing is off: then no tracer call is made.
  let tracer: CallTracer?

  public init(
    authenticator: CallAuthenticator, credentials: StreamCredentials, pipeline: InferencePipeline,
    metrics: ServerMetrics, logger: Logger, tracer: CallTracer? = nil
  ) {
    self.authenticator = authenticator
    self.credentials = credentials
    self.pipeline = pipeline
    self.metrics = metrics
    self.logger = logger
    self.tracer = tracer
  }

  public func serve(
    _ call: FastStreamCall, messages: AsyncStream<ByteBuffer>, respond: @escaping @Sendable (ByteBuffer) -> Void
  ) async -> FastStreamEnd {
    let start = ContinuousClock.now
    let logger = self.logger.with(rpc: Self.rpc, peer: call.connection.remoteAddress)
    let (pipeline, credentials, tracer) = (self.pipeline, self.credentials, self.tracer)
    // Each message is traced as a call of its own under the stream's `traceparent` (authentication happened once,
    // at the stream's start, so a message's spans start at authorise).
    let traceparent = tracer == nil ? nil : call.header("traceparent")
    var context: CallContext?
    do {
      var authenticated = try await authenticator.identify(call.connection, rpc: Self.rpc)
      try await authenticator.authenticate(&authenticated, authorization: call.header("authorization"), rpc: Self.rpc)
      let session = authenticated
      context = session
      try await credentials.whileValid(session) {
        for await message in messages {
          try credentials.check(session)
          // The stream's task runs on its connection's event loop; a large request's work (decoding, screening,
          // computing) goes to the concurrency pool. The answer is written from the loop either way, in order.
          let executor: (any TaskExecutor)? =
            message.readableBytes <= eventLoopRequestLimit ? nil : globalConcurrentExecutor
          respond(
            try await withTaskExecutorPreference(executor) {
              try await Self.answer(
                message, session: session, pipeline: pipeline, tracer: tracer, traceparent: traceparent, logger: logger)
            })
        }
      }
      metrics.recordRPC(method: Self.rpc, code: "OK", duration: ContinuousClock.now - start)
      return .ok
    } catch {
      if let context, let e = error as? PalisadeError, e.code == .unauthenticated {
        logger.notice(
          "stream ended: credentials lapsed",
          metadata: [
            "principal": "\(context.identity)", "request_id": "\(context.requestID)", "reason": "\(e.detail ?? "")",
          ])
        await pipeline.auditor.call(
          context, rpc: Self.rpc, status: "UNAUTHENTICATED", reason: "stream ended: token expired or its key retired")
      }
      let status = StatusMapping.rpcError(for: error, logger: logger)
      metrics.recordRPC(
        method: Self.rpc, code: StatusMapping.codeName(status.code), duration: ContinuousClock.now - start)
      return .failure(status.code, status.message)
    }
  }

  /// One stream message's answer: the inference response, or `error_message` for a message that fails (the stream
  /// goes on, as Triton's does). Only cancellation ends the stream from here.
  static func answer(
    _ message: ByteBuffer, session: CallContext, pipeline: InferencePipeline, tracer: CallTracer?,
    traceparent: String?, logger: Logger
  ) async throws -> ByteBuffer {
    let spans = tracer?.startCall(rpc: Self.rpc, traceparent: traceparent)
    spans?.identified(requestID: session.requestID)
    spans?.skipAuthentication()
    var reply = Inference_ModelStreamInferResponse()
    let request: Inference_ModelInferRequest
    do {
      request = try Inference_ModelInferRequest(serializedBytes: MessageBytes(message))
    } catch {
      let refused = PalisadeError(.invalidArgument, "a request is not a valid ModelInferRequest message")
      spans?.failed(refused, stage: .validate)
      spans?.finish(refused)
      reply.errorMessage = "INVALID_ARGUMENT: \(refused.message)"
      return try serialized(reply)
    }
    do {
      reply.inferResponse = try await pipeline.infer(request, call: session, rpc: Self.rpc, spans: spans)
      spans?.finish(nil)
    } catch let error where !(error is CancellationError) {
      spans?.finish(error)
      let status = StatusMapping.rpcError(for: error, logger: logger)
      reply.errorMessage = "\(StatusMapping.codeName(status.code)): \(status.message)"
      reply.inferResponse.id = request.id
      reply.inferResponse.modelName = request.modelName
    } catch {
      spans?.finish(error)
      throw error
    }
    return try serialized(reply)
  }

  static func serialized(_ reply: Inference_ModelStreamInferResponse) throws -> ByteBuffer {
    let bytes: MessageBytes = try reply.serializedBytes()
    return bytes.buffer
  }
}
