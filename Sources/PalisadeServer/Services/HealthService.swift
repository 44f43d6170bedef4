public import GRPCCore
public import PalisadeCore
public import PalisadeProto
import Synchronization

/// Serving state shared by the health service, the admin endpoint and shutdown.
public final class ServingState: Sendable {
  private let draining = Atomic<Bool>(false)
  public let repository: ModelRepository
  private let isAuditAvailable: @Sendable () -> Bool

  public init(repository: ModelRepository, isAuditAvailable: @escaping @Sendable () -> Bool = { true }) {
    self.repository = repository
    self.isAuditAvailable = isAuditAvailable
  }

  /// Set when graceful shutdown starts: health turns NOT_SERVING so load balancers stop sending.
  public func beginDraining() { draining.store(true, ordering: .relaxed) }
  public var isDraining: Bool { draining.load(ordering: .relaxed) }
  /// Ready: not draining, every required model loaded, and the audit log taking records.
  public var isReady: Bool { !isDraining && repository.isServerReady && isAuditAvailable() }
}

/// `grpc.health.v1.Health`: `""` is the process (SERVING while not draining), `inference.GRPCInferenceService`
/// is readiness. Unknown service names get NOT_FOUND, as the health protocol specifies.
///
/// `Watch` streams are bounded per connection (`maxWatchesPerConnection`, RESOURCE_EXHAUSTED beyond): a watch
/// costs a task and a timer for as long as the client keeps it, and health RPCs need no token.
public struct HealthService: Grpc_Health_V1_Health.SimpleServiceProtocol {
  public static let inferenceServiceName = "inference.GRPCInferenceService"
  let state: ServingState
  let watches: WatchCounter

  public init(state: ServingState, maxWatchesPerConnection: Int = 4) {
    self.state = state
    self.watches = WatchCounter(limit: maxWatchesPerConnection)
  }

  func status(for service: String) -> Grpc_Health_V1_HealthCheckResponse.ServingStatus? {
    switch service {
    case "": state.isDraining ? .notServing : .serving
    case Self.inferenceServiceName: state.isReady ? .serving : .notServing
    default: nil
    }
  }

  public func check(request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext) async throws
    -> Grpc_Health_V1_HealthCheckResponse
  {
    guard let status = status(for: request.service) else {
      throw PalisadeError(.notFound, "unknown service '\(request.service.sanitizedForMessage)'")
    }
    return .with { $0.status = status }
  }

  public func watch(
    request: Grpc_Health_V1_HealthCheckRequest, response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
    context: ServerContext
  ) async throws {
    let connection = (try? context.callContext())?.connection ?? 0
    guard watches.enter(connection) else {
      throw PalisadeError(
        .resourceExhausted, "too many health watches on this connection (at most \(watches.limit)); close one first")
    }
    defer { watches.leave(connection) }
    var last: Grpc_Health_V1_HealthCheckResponse.ServingStatus?
    while !Task.isCancelled {
      let current = status(for: request.service) ?? .serviceUnknown
      if current != last {
        try await response.write(.with { $0.status = current })
        last = current
      }
      // A draining server ends watches so that graceful shutdown is not held open by them.
      if state.isDraining { return }
      try await Task.sleep(for: .milliseconds(500))
    }
  }
}

/// Open health watches per connection.
final class WatchCounter: Sendable {
  let limit: Int
  private let open = Mutex<[UInt64: Int]>([:])

  init(limit: Int) { self.limit = max(1, limit) }

  func enter(_ connection: UInt64) -> Bool {
    open.withLock { o in
      let n = o[connection, default: 0]
      guard n < limit else { return false }
      o[connection] = n + 1
      return true
    }
  }

  func leave(_ connection: UInt64) {
    open.withLock { o in
      let n = o[connection, default: 1] - 1
      o[connection] = n > 0 ? n : nil
    }
  }
}
