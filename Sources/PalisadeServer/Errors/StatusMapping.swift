public import GRPCCore
public import Logging
public import PalisadeCore

/// The one place where errors become gRPC statuses.
///
/// ``PalisadeError`` maps code for code with its caller-safe message. An `RPCError` raised by grpc-swift itself
/// passes through. Anything else is a bug: the caller gets a bare INTERNAL and the log gets the details.
public enum StatusMapping {
  /// The status code for a ``PalisadeError/Code``.
  public static func rpcCode(_ code: PalisadeError.Code) -> RPCError.Code {
    switch code {
    case .unauthenticated: .unauthenticated
    case .permissionDenied: .permissionDenied
    case .invalidArgument: .invalidArgument
    case .notFound: .notFound
    case .resourceExhausted: .resourceExhausted
    case .deadlineExceeded: .deadlineExceeded
    case .unavailable: .unavailable
    case .failedPrecondition: .failedPrecondition
    case .internal: .internalError
    case .unimplemented: .unimplemented
    }
  }

  /// The `RPCError` to send for `error`; logs what the caller does not see.
  ///
  /// grpc-swift converts errors between interceptors (through ``PalisadeError``'s `RPCErrorConvertible`
  /// conformance below), so an error may arrive here as an `RPCError` whose `cause` is the original: that cause
  /// decides.
  public static func rpcError(for error: any Error, logger: Logger) -> RPCError {
    switch error {
    case let error as PalisadeError:
      if error.code == .internal {
        logger.error("internal error", metadata: ["error": "\(error.message)", "detail": "\(error.detail ?? "")"])
      } else if let detail = error.detail {
        logger.notice("call refused", metadata: ["detail": "\(detail)"])
      }
      return RPCError(error)
    case let error as RPCError:
      if let cause = error.cause, !(cause is RPCError) {
        if cause is PalisadeError { return rpcError(for: cause, logger: logger) }
        if error.code == .unknown { return rpcError(for: cause, logger: logger) }
      }
      return error
    case is CancellationError:
      return RPCError(code: .cancelled, message: "call cancelled")
    default:
      logger.error("unexpected error", metadata: ["error": "\(String(reflecting: error))"])
      return RPCError(code: .internalError, message: "internal error")
    }
  }

  /// The canonical status name `error` maps to, without logging (access log and audit records).
  public static func codeName(for error: any Error) -> String {
    switch error {
    case let e as PalisadeError: codeName(rpcCode(e.code))
    case let e as RPCError: codeName(e.code)
    case is CancellationError: "CANCELLED"
    default: "INTERNAL"
    }
  }

  /// The numeric status `error` maps to, without logging (trace attributes).
  public static func statusCode(for error: any Error) -> Int {
    switch error {
    case let e as PalisadeError: Status.Code(rpcCode(e.code)).rawValue
    case let e as RPCError: Status.Code(e.code).rawValue
    case is CancellationError: Status.Code.cancelled.rawValue
    default: Status.Code.internalError.rawValue
    }
  }

  /// The canonical status name used in metrics and logs (e.g. `OK`, `INVALID_ARGUMENT`).
  public static func codeName(_ code: RPCError.Code?) -> String {
    guard let code else { return "OK" }
    return codeName(raw: Status.Code(code).rawValue)
  }

  /// The canonical name of a numeric status.
  static func codeName(raw: Int) -> String {
    canonicalNames.indices.contains(raw) ? canonicalNames[raw] : "UNKNOWN"
  }

  private static let canonicalNames = [
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
  ]
}

/// How grpc-swift turns a ``PalisadeError`` into a status wherever it is thrown. Internal errors never carry
/// their message to the caller.
extension PalisadeError: RPCErrorConvertible {
  public var rpcErrorCode: RPCError.Code { StatusMapping.rpcCode(code) }
  public var rpcErrorMessage: String { code == .internal ? "internal error" : message }
  public var rpcErrorCause: (any Error)? { self }
}
