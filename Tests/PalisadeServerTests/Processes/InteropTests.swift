import Foundation
import PalisadeTestSupport
import Testing

/// Real external clients from PyPI (tritonclient, grpcio, grpcio-health-checking) in the venv `make test` builds.
@Suite struct InteropTests {
  static var python: String {
    ProcessInfo.processInfo.environment["PALISADE_PYTHON"] ?? "\(repositoryRoot)/.venv/bin/python"
  }

  @Test func tritonclientAndGrpcioTalkToPalisade() async throws {
    #expect(FileManager.default.isExecutableFile(atPath: Self.python), "run `make venv` first (\(Self.python))")
    let server = try await TestServer.start()
    let good = try server.pki.client("py", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/py")])
    let bad = try server.pki.client("py-nosan", sans: [.dnsName("py.example")])
    let r = try await ProcessTests.run(
      Self.python,
      [
        "\(repositoryRoot)/Tests/Interop/oip_interop.py", "--port", "\(server.port)", "--cert", good.cert, "--key",
        good.key, "--ca", server.pki.path("ca-bundle.pem"), "--bad-cert", bad.cert, "--bad-key", bad.key,
        "--token", try server.pki.token(for: good.issued),
      ],
      timeout: .seconds(120))
    #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
    #expect(r.stdout.contains("interop OK"))
    try await server.stop()
  }

  @Test func protoIsWireIdenticalToTritonclients() async throws {
    let descriptor = FileManager.default.temporaryDirectory.appendingPathComponent("oip-\(UUID().uuidString).pb").path
    let protoc = try await ProcessTests.run(
      "/usr/bin/protoc",
      [
        "--proto_path=\(repositoryRoot)/proto", "--include_imports", "--descriptor_set_out=\(descriptor)",
        "\(repositoryRoot)/proto/grpc_service.proto",
      ])
    #expect(protoc.status == 0, "\(protoc.stderr)")
    let r = try await ProcessTests.run(Self.python, ["\(repositoryRoot)/scripts/check_proto_wire.py", descriptor])
    #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
  }
}
