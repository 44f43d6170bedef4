public import Logging
import PalisadeCore

/// One structured line per inference (`logging.access_log`): request id, principal, model, version, outcome,
/// latency and the screening score. Never tensor data, never tokens.
public struct AccessLog: Sendable {
  let logger: Logger
  let enabled: Bool

  public init(logger: Logger, enabled: Bool) {
    self.logger = logger
    self.enabled = enabled
  }

  func record(
    call: CallContext, model: String, version: String, status: String, latency: Duration, oodScore: Double?
  ) {
    // The metadata is built only when the line will be written (the level may filter it out).
    guard enabled, logger.logLevel <= .info else { return }
    var metadata: Logger.Metadata = [
      "request_id": "\(call.requestID)", "principal": "\(call.identity.spiffeID)", "model": "\(model.boundedForRecord)",
      "version": "\(version.boundedForRecord)", "status": "\(status)", "latency_us": "\(latency.microseconds)",
    ]
    if let oodScore { metadata["ood_score"] = "\(oodScore)" }
    if let jti = call.token?.tokenID { metadata["token_id"] = "\(jti)" }
    logger.info("inference", metadata: metadata)
  }
}

extension Duration {
  /// Whole microseconds.
  var microseconds: Int64 {
    components.seconds * 1_000_000 + components.attoseconds / 1_000_000_000_000
  }
}
