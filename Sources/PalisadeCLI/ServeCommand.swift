import ArgumentParser
import Foundation
import Logging
import PalisadeServer
import PalisadeSupport
import PalisadeYAML
import PalisadeIdentity
import PalisadeRuntime
import PalisadeCPUCheck

/// `palisade serve`: run the server from one YAML file.
struct ServeCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Run the inference server.",
    discussion: """
      Reads one YAML configuration file (see deploy/palisade.example.yaml for every setting, annotated).
      Relative paths in it are resolved against the file's own directory.

      Exit codes: 0 after a clean shutdown (SIGTERM/SIGINT drain in-flight calls first), 2 when the
      configuration or a file it names is invalid, 1 on any other failure.
      """
  )

  @Option(name: .long, help: "The YAML configuration file.")
  var config: String

  @Flag(name: .long, help: "Validate the configuration and every file it names, then exit without serving.")
  var check = false

  func run() async throws {
    // The kernels need AVX2/FMA: say so instead of dying on an illegal instruction.
    do { try CPUFeatures.check() } catch {
      FileHandle.standardError.write(Data("palisade: \(error)\n".utf8))
      throw ExitCode(1)
    }
    let settings: ServerConfig
    do {
      settings = try ServerConfig.load(path: config)
    } catch {
      Self.fail("config error: \(error)")
    }
    let logger = Self.makeLogger(settings.logging)
    let runtime: ServerRuntime
    do {
      runtime = try ServerRuntime(config: settings, runtimes: [ONNXModelRuntime()], logger: logger)
    } catch let error as PEMFileError {
      Self.fail("config error: \(error)")
    } catch {
      Self.fail("config error: \(error)")
    }
    if check {
      print(
        "configuration OK: \(config) (gRPC on \(settings.server.listen), admin \(settings.admin.enabled ? settings.admin.listen.description : "disabled"))"
      )
      return
    }
    try await runtime.run()
  }

  /// Prints `message` to standard error and exits with status 2 (invalid configuration).
  static func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("palisade: \(message)\n".utf8))
    Foundation.exit(2)
  }

  static func makeLogger(_ settings: ServerConfig.Logging) -> Logger {
    let level = Logger.Level(rawValue: settings.level) ?? .info
    switch settings.format {
    case .json:
      return Logger(label: "palisade") { JSONLogHandler(label: $0, level: level) }
    case .text:
      return Logger(label: "palisade") { TextLogHandler(label: $0, level: level) }
    }
  }
}
