import Foundation
import Synchronization

/// A real process whose output is collected as it arrives: `palisade serve` (optionally as another user, through
/// `setpriv`), the sidecar, Python helpers. One type for every process test, so waiting, port discovery and
/// shutdown behave the same everywhere.
final class LoggedProcess: @unchecked Sendable {
  let process = Process()
  private let collected = Mutex<String>("")
  var log: String { collected.withLock { $0 } }

  /// Starts `executable`; its standard error (and standard output, unless `captureStandardOutput` is false) is
  /// collected into `log`.
  init(_ executable: String, _ arguments: [String], captureStandardOutput: Bool = true) throws {
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let pipe = Pipe()
    process.standardError = pipe
    process.standardOutput = captureStandardOutput ? pipe : FileHandle.nullDevice
    pipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
      let text = String(decoding: handle.availableData, as: UTF8.self)
      self?.collected.withLock { $0 += text }
    }
    try process.run()
  }

  /// `palisade serve --config CONFIG`, as user and group `uid` when given (root ignores file permissions, so the
  /// tests that need them to bind run the server as another user).
  static func serve(config: String, uid: UInt32? = nil) throws -> LoggedProcess {
    let serve = [ProcessTests.binary, "serve", "--config", config]
    guard let uid else { return try LoggedProcess(serve[0], Array(serve.dropFirst()), captureStandardOutput: false) }
    return try LoggedProcess(
      "/usr/bin/setpriv", ["--reuid=\(uid)", "--regid=\(uid)", "--clear-groups"] + serve, captureStandardOutput: false)
  }

  /// Waits (bounded) until the log contains `text`; false at the timeout or once the process has exited without it.
  func waitFor(_ text: String, timeout: Duration = .seconds(30)) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
      if log.contains(text) { return true }
      if !process.isRunning { return log.contains(text) }
      try await Task.sleep(for: .milliseconds(50))
    }
    return false
  }

  /// The port in the `listen` field of the first log line containing `message`, in the JSON or the text format
  /// (`... palisade serving listen=127.0.0.1:1234 ...`); 0 when it never comes.
  func listenPort(_ message: String) async throws -> Int {
    guard try await waitFor(message) else { return 0 }
    for line in log.split(separator: "\n") where line.contains(message) {
      if let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
        let listen = object["listen"] as? String, let p = Int(listen.split(separator: ":").last ?? "")
      {
        return p
      }
      if let field = line.split(separator: " ").first(where: { $0.hasPrefix("listen=") }),
        let p = Int(field.split(separator: ":").last ?? "")
      {
        return p
      }
    }
    return 0
  }

  /// The server's gRPC port, from its "palisade serving" line.
  func port() async throws -> Int { try await listenPort("palisade serving") }

  /// The port from the JSON log line containing `marker`.
  func jsonPort(after marker: String) async throws -> Int { try await listenPort(marker) }

  /// Python's http.server: "Serving HTTP on 0.0.0.0 port N".
  func httpServerPort() async throws -> Int {
    guard try await waitFor("Serving HTTP") else { return 0 }
    guard let range = log.range(of: #"port (\d+)"#, options: .regularExpression) else { return 0 }
    return Int(log[range].dropFirst(5)) ?? 0
  }

  func signal(_ number: Int32) { Foundation.kill(process.processIdentifier, number) }

  /// SIGTERM, then the exit status once it has exited; SIGKILL and -1 when it has not within 30 s.
  func terminate() async throws -> Int32 {
    process.terminate()
    let deadline = ContinuousClock.now + .seconds(30)
    while process.isRunning, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
    if process.isRunning {
      kill()
      return -1
    }
    return process.terminationStatus
  }

  /// SIGKILL and reap: children inherit the test process's ignored SIGTERM (swift-service-lifecycle ignores it
  /// to watch it), so helpers like Python's http.server would outlive a plain terminate().
  func kill() {
    guard process.isRunning else { return }
    Foundation.kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
  }

  func sigkill() { kill() }
}
