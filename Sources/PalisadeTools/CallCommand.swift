import ArgumentParser
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import PalisadeClient
import PalisadeProto

/// `palisade call`: a small Open Inference Protocol client over mTLS.
struct CallCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "call",
    abstract: "Call a Palisade server over mutual TLS (live, ready, metadata, infer; health probes the admin port).",
    discussion: """
      The defaults use the dev PKI made by `make pki` (certs/out) and the demo address 127.0.0.1:8443.
      Errors print the gRPC status code and message and exit 1.
      """,
    subcommands: [Live.self, Ready.self, Metadata.self, Infer.self, Health.self]
  )

  struct Connection: ParsableArguments {
    @Option(help: "Server address, host:port.")
    var target = "127.0.0.1:8443"
    @Option(help: "This client's certificate chain (PEM).")
    var cert = "certs/out/client-a.pem"
    @Option(help: "This client's private key (PEM).")
    var key = "certs/out/client-a.key"
    @Option(help: "CA bundle that signs the server certificate (PEM).")
    var ca = "certs/out/ca-bundle.pem"
    @Option(
      help: "Bearer token (JWT) bound to --cert; default: $PALISADE_TOKEN. `palisade token mint` makes dev tokens.")
    var token: String?
    @Option(help: "Read the bearer token from this file instead.")
    var tokenFile: String?

    func bearer() throws -> String? {
      if let tokenFile {
        do {
          return try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
          throw ValidationError("cannot read --token-file \(tokenFile)")
        }
      }
      return token ?? ProcessInfo.processInfo.environment["PALISADE_TOKEN"]
    }

    func call<R: Sendable>(
      _ body:
        @escaping @Sendable (Inference_GRPCInferenceService.Client<HTTP2ClientTransport.Posix>)
        async throws -> R
    ) async throws -> R {
      try await connect { try await body(Inference_GRPCInferenceService.Client(wrapping: $0)) }
    }

    /// `--target` split into host and port.
    func hostPort() throws -> (String, Int) {
      guard let colon = target.lastIndex(of: ":"), let port = Int(target[target.index(after: colon)...]) else {
        throw ValidationError("--target must be host:port, got '\(target)'")
      }
      var host = String(target[..<colon])
      if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
      return (host, port)
    }

    /// Connects and runs `body` with the raw client (for Palisade's own services); RPC errors print and exit 1.
    func connect<R: Sendable>(
      _ body: @escaping @Sendable (GRPCClient<HTTP2ClientTransport.Posix>) async throws -> R
    ) async throws -> R {
      guard let colon = target.lastIndex(of: ":"), let port = Int(target[target.index(after: colon)...]) else {
        throw ValidationError("--target must be host:port, got '\(target)'")
      }
      var host = String(target[..<colon])
      if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
      let tls = ClientTLSFiles(certificate: cert, privateKey: key, serverCA: ca)
      do {
        return try await withPalisadeConnection(host: host, port: port, tls: tls, token: try bearer(), body)
      } catch let error as RPCError {
        var message = "\(error.code): \(error.message)"
        if let cause = error.cause { message += " (\(cause))" }
        FileHandle.standardError.write(Data("palisade call: \(message)\n".utf8))
        throw ExitCode(1)
      }
    }
  }

  struct Live: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Is the server live? Prints true or false.")
    @OptionGroup var connection: Connection
    func run() async throws {
      let live = try await connection.call { try await $0.serverLive(.init()).live }
      print(live)
      if !live { throw ExitCode(1) }
    }
  }

  struct Ready: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Is the server (or one model) ready? Prints true or false; exit 1 when not ready.")
    @OptionGroup var connection: Connection
    @Argument(help: "A model name; without it, the server's readiness.")
    var model: String?
    @Option(help: "Model version (default: the newest ready one).")
    var version = ""
    func run() async throws {
      let model = self.model
      let version = self.version
      let ready = try await connection.call { client in
        if let model {
          return try await client.modelReady(
            .with {
              $0.name = model
              $0.version = version
            }
          ).ready
        }
        return try await client.serverReady(.init()).ready
      }
      print(ready)
      if !ready { throw ExitCode(1) }
    }
  }

  struct Metadata: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print server metadata, or a model's inputs and outputs, as JSON.")
    @OptionGroup var connection: Connection
    @Argument(help: "A model name; without it, the server's metadata.")
    var model: String?
    @Option(help: "Model version.")
    var version = ""
    func run() async throws {
      let model = self.model
      let version = self.version
      let json: String = try await connection.call { client in
        if let model {
          let m = try await client.modelMetadata(
            .with {
              $0.name = model
              $0.version = version
            })
          func spec(_ t: Inference_ModelMetadataResponse.TensorMetadata) -> [String: Any] {
            ["name": t.name, "datatype": t.datatype, "shape": t.shape]
          }
          return try Self.render([
            "name": m.name, "versions": m.versions, "platform": m.platform, "inputs": m.inputs.map(spec),
            "outputs": m.outputs.map(spec), "properties": m.properties,
          ])
        }
        let s = try await client.serverMetadata(.init())
        return try Self.render(["name": s.name, "version": s.version, "extensions": s.extensions])
      }
      print(json)
    }

    static func render(_ object: [String: Any]) throws -> String {
      String(
        decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted]),
        as: UTF8.self)
    }
  }

  struct Infer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Run one inference from a JSON request and print the JSON response.",
      discussion: """
        The request uses the KServe v2 REST shape:
          {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}],
           "outputs": [{"name": "probabilities"}]}
        "outputs" is optional (default: every output). BYTES data are strings; FP16/BF16 are sent raw.
        """
    )
    @OptionGroup var connection: Connection
    @Argument(help: "The model name.")
    var model: String
    @Option(help: "Model version (default: the newest ready one).")
    var version = ""
    @Option(help: "JSON request file, or - for standard input.")
    var input: String
    @Flag(help: "Send inputs as raw_input_contents instead of typed contents.")
    var raw = false

    func run() async throws {
      // FileHandle reads pipes and process substitutions as well as regular files.
      let handle = input == "-" ? FileHandle.standardInput : FileHandle(forReadingAtPath: input)
      guard let handle else { throw ValidationError("cannot read --input \(input)") }
      let data = handle.readDataToEndOfFile()
      let request: Inference_ModelInferRequest
      do { request = try JSONTensors.request(model: model, version: version, json: data, raw: raw) } catch {
        throw ValidationError("bad request JSON: \(error)")
      }
      let response = try await connection.call { try await $0.modelInfer(request) }
      print(String(decoding: try JSONTensors.json(response), as: UTF8.self))
    }
  }
}
