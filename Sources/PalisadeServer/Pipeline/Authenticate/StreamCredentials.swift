public import Foundation
public import PalisadeCore
public import PalisadeIdentity

/// Keeps a long-lived call (a `ModelStreamInfer` stream) within the life of its credentials.
///
/// A unary call is authenticated once, at its start, and lasts a moment. A stream can last hours, so its token is
/// checked again before every message and on a timer: once the token expires (beyond the leeway) or the key that
/// signed it leaves the issuer's JWKS, the stream ends with UNAUTHENTICATED, as a new call would be refused.
public struct StreamCredentials: Sendable {
  let verifier: TokenVerifier?
  /// How often an idle stream's token is re-checked (key rotation is noticed within this; expiry exactly).
  let pollInterval: Duration

  public init(verifier: TokenVerifier?, pollInterval: Duration = .seconds(1)) {
    self.verifier = verifier
    self.pollInterval = pollInterval
  }

  /// Throws UNAUTHENTICATED when the call's token no longer holds. Calls without a token (exempt RPCs) pass.
  public func check(_ call: CallContext, now: Date = Date()) throws(PalisadeError) {
    guard let verifier, let token = call.token else { return }
    do {
      try verifier.revalidate(token, now: now)
    } catch {
      throw PalisadeError(
        .unauthenticated, "credentials expired or revoked; open a new stream with a fresh token", detail: "\(error)")
    }
  }

  /// Runs `body` (the stream) until it returns, or until the call's token lapses, whichever is first; in the
  /// second case `body` is cancelled and UNAUTHENTICATED is thrown.
  public func whileValid(_ call: CallContext, _ body: @escaping @Sendable () async throws -> Void) async throws {
    guard verifier != nil, call.token != nil else { return try await body() }
    try await withThrowingTaskGroup(of: Void.self) { group in
      group.addTask { try await body() }
      group.addTask {
        while true {
          try check(call)
          try await Task.sleep(for: pollDelay(call))
        }
      }
      // The first child to finish decides: the stream ending, or the watch throwing.
      defer { group.cancelAll() }
      try await group.next()
    }
  }

  /// Sleeps until the sooner of the next poll and the token's exact lapse.
  private func pollDelay(_ call: CallContext) -> Duration {
    guard let token = call.token, let verifier else { return pollInterval }
    let lapse = token.expiresAt.timeIntervalSinceNow + Double(verifier.settings.leewaySeconds) + 0.001
    guard lapse.isFinite, lapse > 0 else { return .milliseconds(1) }
    return lapse < 1 ? min(pollInterval, .milliseconds(Int64((lapse * 1000).rounded(.up)))) : pollInterval
  }
}
