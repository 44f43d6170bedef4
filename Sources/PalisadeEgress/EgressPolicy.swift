import Foundation

/// The target of an absolute-form request (`POST https://host:port/path?q HTTP/1.1`).
public struct ProxyTarget: Sendable, Equatable {
  public var scheme: String
  /// Lower case, no trailing dot, no IPv6 brackets.
  public var host: String
  public var port: Int
  /// Path and query as sent (`/a/b?c=d`), never empty.
  public var path: String

  /// Parses an absolute http(s) URI; nil for anything else (origin form, user info, fragments, odd schemes).
  public init?(absoluteURI uri: String) {
    guard let c = URLComponents(string: uri), let scheme = c.scheme?.lowercased(),
      scheme == "https" || scheme == "http",
      let host = c.host, !host.isEmpty, c.user == nil, c.password == nil, c.fragment == nil
    else { return nil }
    self.scheme = scheme
    self.host = EgressConfig.normalizeHost(host)
    self.port = c.port ?? (scheme == "https" ? 443 : 80)
    guard (1...65535).contains(port) else { return nil }
    var p = c.percentEncodedPath
    if p.isEmpty { p = "/" }
    if let q = c.percentEncodedQuery { p += "?" + q }
    self.path = p
  }

  /// Parses a CONNECT target (`host:port`).
  public init?(authority: String) {
    guard let c = URLComponents(string: "https://" + authority), let host = c.host, let port = c.port,
      c.path.isEmpty, c.user == nil
    else { return nil }
    self.scheme = "connect"
    guard (1...65535).contains(port) else { return nil }
    self.host = EgressConfig.normalizeHost(host)
    self.port = port
    self.path = ""
  }

  /// `host:port` for the Host header, with brackets for IPv6.
  public var authority: String {
    let h = host.contains(":") ? "[\(host)]" : host
    let defaultPort = scheme == "https" ? 443 : 80
    return port == defaultPort ? h : "\(h):\(port)"
  }
}

/// Why a request was refused. The raw values are metric labels and event reasons (a fixed set).
public enum BlockReason: String, Sendable, Codable, CaseIterable {
  case badRequest = "bad_request"
  case destination
  case method
  case path
  case address
  case metadataAddress = "metadata_address"
  case resolution
  case connect
  case bodyTooLarge = "body_too_large"
  /// A Content-Encoding (or transfer coding) the inspector cannot see through.
  case contentEncoding = "content_encoding"
  case byteBudget = "byte_budget"
  case canary
  case privateKey = "private_key"
  case jwt
  case secret
  case highEntropy = "high_entropy"
  case modelWeights = "model_weights"
}

/// The allowlist decision for a target, before any byte is sent.
struct EgressPolicy: Sendable {
  let destinations: [EgressConfig.Destination]

  enum Decision: Sendable {
    case allow(EgressConfig.Destination)
    case deny(BlockReason, String, destination: String?)
  }

  func decide(method: String, target: ProxyTarget) -> Decision {
    let candidates = destinations.filter { $0.host == target.host }
    guard !candidates.isEmpty else {
      return .deny(.destination, "host is not an allowed destination", destination: nil)
    }
    let onPort = candidates.filter { $0.port == target.port && $0.scheme == target.scheme }
    guard let first = onPort.first else {
      return .deny(.destination, "scheme or port is not allowed for this host", destination: candidates[0].name)
    }
    let withMethod = onPort.filter { $0.methods.contains(method) }
    guard !withMethod.isEmpty else { return .deny(.method, "method \(method) is not allowed", destination: first.name) }
    guard Self.pathIsCanonical(target.path) else {
      return .deny(.path, "path has dot segments or encoded separators", destination: first.name)
    }
    guard let d = withMethod.first(where: { d in d.pathPrefixes.contains { target.path.hasPrefix($0) } }) else {
      return .deny(.path, "path is not under an allowed prefix", destination: first.name)
    }
    return .allow(d)
  }

  /// The destination that explicitly allows CONNECT tunnels to this host and port, if any.
  func connectDestination(_ target: ProxyTarget) -> EgressConfig.Destination? {
    destinations.first { $0.allowConnect && $0.host == target.host && $0.port == target.port }
  }

  /// Refuses `.`/`..` segments (also with a `;parameter`, which Tomcat, Jetty and Spring read as the bare segment),
  /// and percent-encoded `/`, `\`, `.` and `%` (a double encoding) in the path, which upstreams may normalise
  /// differently from a prefix check.
  static func pathIsCanonical(_ pathAndQuery: String) -> Bool {
    let path = pathAndQuery.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
    let lower = path.lowercased()
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e") || lower.contains("%25")
      || lower.contains("\\")
    {
      return false
    }
    for segment in path.split(separator: "/", omittingEmptySubsequences: false) {
      let bare = segment.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
      if bare == "." || bare == ".." { return false }
    }
    return true
  }
}

/// A fixed-window byte budget per destination.
final class ByteBudgets: @unchecked Sendable {
  private let lock = NSLock()
  private var used: [String: (window: Int, bytes: Int)] = [:]

  /// Charges `bytes` to `destination` if the budget allows it; false (and nothing charged) otherwise.
  func charge(_ destination: EgressConfig.Destination, bytes: Int, now: Date = Date()) -> Bool {
    guard let budget = destination.byteBudget else { return true }
    // Int(_:) traps on a non-finite or out-of-range Double; a clock that far off counts as window 0.
    let seconds = now.timeIntervalSince1970
    let window = (seconds.isFinite && abs(seconds) < 1e15 ? Int(seconds) : 0) / max(1, budget.windowSeconds)
    lock.lock()
    defer { lock.unlock() }
    var entry = used[destination.name] ?? (window, 0)
    if entry.window != window { entry = (window, 0) }
    guard bytes >= 0, bytes <= budget.bytes - entry.bytes else { return false }  // no overflow near Int.max
    entry.bytes += bytes
    used[destination.name] = entry
    return true
  }
}
