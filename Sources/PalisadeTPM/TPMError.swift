/// Why a TPM operation failed. Never a crash: a TPM that is absent, busy, locked out or answers with an error code
/// becomes one of these, and the server carries on with software-signed evidence or refuses the call.
public enum TPMError: Error, Sendable, Equatable, CustomStringConvertible {
  /// The TCTI (the transport to the TPM: `device:/dev/tpmrm0`, `swtpm:host=…,port=…`) could not be opened.
  case transport(String, code: UInt32)
  /// A TPM command (or the TSS on its behalf) returned a response code.
  case command(String, code: UInt32)
  /// Bytes that are not the TPM structure they should be (from the TPM, the wire or a file).
  case malformed(String)
  /// A structure or algorithm this code does not handle (e.g. an RSA endorsement key for credential activation).
  case unsupported(String)
  /// An argument outside what the TPM accepts (a PCR index, a nonce length).
  case invalidArgument(String)

  public var description: String {
    switch self {
    case .transport(let what, let code): "TPM transport \(what) failed (TSS rc 0x\(String(code, radix: 16)))"
    case .command(let what, let code): "TPM \(what) failed (rc 0x\(String(code, radix: 16)))"
    case .malformed(let what): "malformed TPM structure: \(what)"
    case .unsupported(let what): "unsupported: \(what)"
    case .invalidArgument(let what): "invalid TPM argument: \(what)"
    }
  }
}
