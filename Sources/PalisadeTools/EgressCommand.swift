import ArgumentParser
import Foundation
import Logging
import PalisadeEgress
import PalisadeSupport

/// `palisade egress`: run the egress sidecar, the only way out for everything the server sends.
struct EgressCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "egress",
    abstract: "Run the egress sidecar: an inspecting, fail-closed forward proxy.",
    discussion: """
      Reads one YAML configuration file (see deploy/egress.example.yaml, annotated, and docs/egress.md).
      Relative paths in it are resolved against the file's own directory. Clients send absolute-form
      requests (POST https://host/path HTTP/1.1) in plain HTTP to the proxy; the sidecar checks the
      allowlist, resolves and checks the address, inspects the whole request and originates TLS itself.

      Exit codes: 0 after SIGTERM/SIGINT, 2 when the configuration or a file it names is invalid (nothing
      is forwarded then), 1 on any other failure.
      """
  )

  @Option(name: .long, help: "The YAML configuration file.")
  var config: String

  @Flag(name: .long, help: "Validate the configuration, load the bundle fingerprints, then exit.")
  var check = false

  func run() async throws {
    let settings: EgressConfig
    do { settings = try EgressConfig.load(path: config) } catch { Self.fail("config error: \(error)") }
    let level = Logger.Level(rawValue: settings.logLevel) ?? .info
    let logger = Logger(label: "palisade-egress") { JSONLogHandler(label: $0, level: level) }
    let proxy: EgressProxy
    do { proxy = try EgressProxy(config: settings, logger: logger) } catch {
      Self.fail("config error: \(error)")
    }
    if check {
      print("configuration OK: \(config) (\(proxy.summary); proxy on \(settings.listen.host):\(settings.listen.port))")
      return
    }
    let task = Task { try await proxy.run() }
    // SIGTERM/SIGINT end the listeners; requests in flight are cut (callers retry through their queues).
    let signals = [SIGTERM, SIGINT].map { sig -> any DispatchSourceSignal in
      signal(sig, SIG_IGN)
      let source = DispatchSource.makeSignalSource(signal: sig)
      source.setEventHandler { task.cancel() }
      source.resume()
      return source
    }
    defer { signals.forEach { $0.cancel() } }
    do { try await task.value } catch is CancellationError {} catch {
      if !task.isCancelled { throw error }
    }
  }

  /// Prints `message` to standard error and exits with status 2 (invalid configuration), as `serve` does.
  static func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("palisade: \(message)\n".utf8))
    Foundation.exit(2)
  }
}
