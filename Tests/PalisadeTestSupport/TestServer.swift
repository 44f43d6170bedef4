import Foundation
import Logging
import NIOCore
import PalisadeCore
import PalisadeServer
import PalisadeRuntime

/// A real server on loopback (real TLS, ephemeral ports) serving test models, run inside the test process.
public final class TestServer: @unchecked Sendable {
  public let pki: TestPKI
  public let runtime: ServerRuntime
  public let port: Int
  public let adminPort: Int
  private let task: Task<Void, any Error>

  /// Starts a server with `models` registered; `configure` may adjust the config first.
  public static func start(
    pki: TestPKI? = nil, models: [any ServableModel] = TestServer.defaultModels(),
    required: [String] = [], policy: String = TestServer.allowAllPolicy,
    configure: (inout ServerConfig) -> Void = { _ in }
  ) async throws -> TestServer {
    let pki = try pki ?? TestPKI()
    try pki.write("jwks.json", pki.jwksJSON())
    try pki.write("policy.yaml", policy)
    var config = ServerConfig(
      server: .init(
        listen: .init(host: "127.0.0.1", port: 0),
        tls: .init(
          certificateChain: pki.path("server.pem"), privateKey: pki.path("server.key"),
          clientCABundle: pki.path("ca-bundle.pem"))),
      auth: .init(
        audience: TestPKI.audience,
        issuers: [.init(issuer: TestPKI.issuerName, kind: .oauth, jwks: pki.path("jwks.json"))]),
      policy: .init(file: pki.path("policy.yaml")),
      admin: .init(enabled: true, listen: .init(host: "127.0.0.1", port: 0)))
    config.models.required = required
    config.server.shutdownGraceSeconds = 5
    configure(&config)
    var logger = Logger(label: "test-server")
    logger.logLevel = ProcessInfo.processInfo.environment["PALISADE_TEST_LOG"] == nil ? .critical : .debug
    let repository = ModelRepository(required: Set(config.models.required))
    for model in models { repository.register(model) }
    let runtime = try ServerRuntime(
      config: config, repository: repository, runtimes: [TestRuntime(), ONNXModelRuntime()], logger: logger)
    let task = Task { try await runtime.run(handleSignals: false) }
    let port = await runtime.grpcAddress.get().port ?? 0
    let adminPort = await runtime.admin?.bound.get().port ?? 0
    return TestServer(pki: pki, runtime: runtime, port: port, adminPort: adminPort, task: task)
  }

  /// Every non-admin RPC on every model for any caller in the test trust domain.
  public static let allowAllPolicy = """
    version: 1
    rules:
      - name: test-callers
        principals: [{spiffe_prefix: "spiffe://palisade.test"}]
        rpcs: ["*"]
    """

  public static func defaultModels() -> [any ServableModel] {
    [AddSubModel()] + DataType.allCases.map { IdentityModel(datatype: $0) }
  }

  init(pki: TestPKI, runtime: ServerRuntime, port: Int, adminPort: Int, task: Task<Void, any Error>) {
    self.pki = pki
    self.runtime = runtime
    self.port = port
    self.adminPort = adminPort
    self.task = task
  }

  /// Graceful shutdown, then waits for the server to stop.
  public func stop() async throws {
    runtime.shutdown()
    try await task.value
  }

  /// Waits for the server task to finish (after a shutdown started elsewhere).
  public func wait() async throws { try await task.value }
}
