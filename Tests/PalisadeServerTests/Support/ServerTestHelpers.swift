import Foundation
#if canImport(FoundationNetworking)
  import FoundationNetworking
#endif
import GRPCCore
import GRPCNIOTransportHTTP2
import PalisadeClient
import PalisadeProto
import PalisadeTestSupport

/// Calls `body` with a client using the named client certificate files and, when given, a bearer token.
func withClient<R: Sendable>(
  _ server: TestServer, cert: String, key: String, token: String? = nil,
  _ body: @escaping @Sendable (Inference_GRPCInferenceService.Client<HTTP2ClientTransport.Posix>) async throws -> R
) async throws -> R {
  try await withInferenceClient(
    host: "127.0.0.1", port: server.port,
    tls: ClientTLSFiles(certificate: cert, privateKey: key, serverCA: server.pki.path("server-ca.pem")), token: token,
    body)
}

/// A caller: certificate files and a token bound to the certificate.
struct TestClient: Sendable {
  var cert: String
  var key: String
  var token: String?
  var issued: TestPKI.Issued
}

func withClient<R: Sendable>(
  _ server: TestServer, _ client: TestClient,
  _ body: @escaping @Sendable (Inference_GRPCInferenceService.Client<HTTP2ClientTransport.Posix>) async throws -> R
) async throws -> R {
  try await withClient(server, cert: client.cert, key: client.key, token: client.token, body)
}

/// A good client for `spiffe://palisade.test/sa/<name>` with a valid bound token.
func goodClient(_ server: TestServer, _ name: String = "caller", scopes: [String] = []) throws -> TestClient {
  let c = try server.pki.client(name, sans: [TestPKI.spiffe("spiffe://palisade.test/sa/\(name)")])
  return TestClient(
    cert: c.cert, key: c.key, token: try server.pki.token(for: c.issued, scopes: scopes), issued: c.issued)
}

/// The RPC error `body` throws, or nil if it succeeds.
func rpcError(_ body: () async throws -> Void) async -> RPCError? {
  do {
    try await body()
    return nil
  } catch let error as RPCError {
    return error
  } catch {
    return RPCError(code: .unknown, message: "non-RPC error: \(error)")
  }
}

func simpleRequest(raw: Bool, a: [Int32] = Array(0..<16), b: [Int32] = Array(repeating: 1, count: 16))
  -> Inference_ModelInferRequest
{
  .with { r in
    r.modelName = "simple"
    r.id = "req-1"
    for (name, values) in [("INPUT0", a), ("INPUT1", b)] {
      var input = Inference_ModelInferRequest.InferInputTensor()
      input.name = name
      input.datatype = "INT32"
      input.shape = [1, Int64(values.count)]
      if raw {
        r.rawInputContents.append(values.withUnsafeBytes { Data($0) })
      } else {
        input.contents.intContents = values
      }
      r.inputs.append(input)
    }
  }
}

/// GET on the admin endpoint: status and body.
func adminGet(_ server: TestServer, _ path: String) async throws -> (Int, String) {
  let url = URL(string: "http://127.0.0.1:\(server.adminPort)\(path)")!
  let (data, response) = try await URLSession.shared.data(from: url)
  return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
}

/// The repository root: the nearest directory above this file that holds Package.swift (test files sit in
/// folders of different depths).
let repositoryRoot: String = {
  var url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
  while url.path != "/" && !FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) {
    url.deleteLastPathComponent()
  }
  return url.path
}()
