/// The one error type that crosses stage boundaries.
///
/// Every stage of the request pipeline throws `PalisadeError`; the RPC layer maps ``Code`` to a gRPC status in
/// exactly one place. ``message`` is what the caller sees: it names the offending input or rule and never
/// contains tensor data, tokens or internals. ``detail`` is for the operator's log only.
public struct PalisadeError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The outcome class, one-to-one with the gRPC status codes Palisade returns.
  public enum Code: String, Sendable, Equatable, CaseIterable {
    /// No or invalid credentials (certificate identity, token).
    case unauthenticated
    /// The policy refuses this caller for this call.
    case permissionDenied
    /// The request is malformed or violates the model's declared contract.
    case invalidArgument
    /// Unknown model or version.
    case notFound
    /// A limit was hit: size, rate, queue.
    case resourceExhausted
    /// The caller's deadline passed before the work completed.
    case deadlineExceeded
    /// The model or server is temporarily unable to serve.
    case unavailable
    /// An administrative call whose precondition does not hold (bundle or policy problems).
    case failedPrecondition
    /// A bug. The caller only ever sees a generic message.
    case `internal`
    /// The RPC is not served.
    case unimplemented
  }

  /// The outcome class.
  public var code: Code
  /// Safe to return to the caller.
  public var message: String
  /// Extra context for the server log; never sent to the caller.
  public var detail: String?

  /// Creates an error.
  public init(_ code: Code, _ message: String, detail: String? = nil) {
    self.code = code
    self.message = message
    self.detail = detail
  }

  public var description: String {
    if let detail { return "\(code.rawValue): \(message) (\(detail))" }
    return "\(code.rawValue): \(message)"
  }

  /// An invalid-argument error about one named input. The message never includes the input's data.
  public static func invalidInput(_ name: String, _ rule: String) -> Self {
    PalisadeError(.invalidArgument, "input '\(name.sanitizedForMessage)': \(rule)")
  }
}

extension String {
  /// A caller-supplied string for an audit record or a log line: whole when short (every valid model name and
  /// version is), else cut at 256 bytes with its length noted, so that a refused call cannot write megabytes.
  public var boundedForRecord: String {
    let limit = 256
    guard utf8.count > limit else { return self }
    return String(decoding: utf8.prefix(limit), as: UTF8.self) + "…(\(utf8.count) bytes)"
  }

  /// A caller-supplied name made safe to echo: bounded length, control characters replaced.
  public var sanitizedForMessage: String {
    let limit = 128
    var out = ""
    out.reserveCapacity(Swift.min(utf8.count, limit))
    for scalar in unicodeScalars.prefix(limit) {
      if scalar.properties.generalCategory == .control || scalar == "'" {
        out.append("?")
      } else {
        out.unicodeScalars.append(scalar)
      }
    }
    if unicodeScalars.count > limit { out += "…" }
    return out
  }
}
