public import GRPCCore
public import Logging

/// The outermost interceptor: maps every error to its status (through ``StatusMapping``, the one place that does)
/// and records each call's status and latency, streaming calls included.
public struct CallObserverInterceptor: ServerInterceptor {
  private let metrics: ServerMetrics
  private let logger: Logger

  public init(metrics: ServerMetrics, logger: Logger) {
    self.metrics = metrics
    self.logger = logger
  }

  public func intercept<Input: Sendable, Output: Sendable>(
    request: StreamingServerRequest<Input>,
    context: ServerContext,
    next: @Sendable (StreamingServerRequest<Input>, ServerContext) async throws -> StreamingServerResponse<Output>
  ) async throws -> StreamingServerResponse<Output> {
    let start = ContinuousClock.now
    let method = context.descriptor.method
    let metrics = self.metrics
    let logger = self.logger.with(rpc: method, peer: context.remotePeer)
    @Sendable func finish(_ code: RPCError.Code?) {
      metrics.recordRPC(method: method, code: StatusMapping.codeName(code), duration: ContinuousClock.now - start)
    }
    do {
      var response = try await next(request, context)
      switch response.accepted {
      case .success(var contents):
        let producer = contents.producer
        contents.producer = { writer in
          do {
            let trailers = try await producer(writer)
            finish(nil)
            return trailers
          } catch {
            let status = StatusMapping.rpcError(for: error, logger: logger)
            finish(status.code)
            throw status
          }
        }
        response.accepted = .success(contents)
      case .failure(let error):
        let status = StatusMapping.rpcError(for: error, logger: logger)
        finish(status.code)
        response.accepted = .failure(status)
      }
      return response
    } catch {
      let status = StatusMapping.rpcError(for: error, logger: logger)
      finish(status.code)
      throw status
    }
  }
}

extension Logger {
  func with(rpc: String, peer: String) -> Logger {
    var copy = self
    copy[metadataKey: "rpc"] = "\(rpc)"
    copy[metadataKey: "peer"] = "\(peer)"
    return copy
  }
}
