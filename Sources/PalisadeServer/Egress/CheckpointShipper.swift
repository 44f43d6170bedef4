import Foundation
public import Logging
import PalisadeOutbound
public import ServiceLifecycle

/// Ships every new signed audit checkpoint to a collector (`egress.checkpoint_url`), through the egress sidecar
/// only (`egress.proxy`): a collector outside holds a copy the server cannot rewrite, so a log rewritten after
/// the fact no longer matches what was shipped. Checkpoints queue and retry while the sidecar is down; nothing
/// is ever sent directly.
public final class CheckpointShipper: Service, Sendable {
  let auditor: Auditor
  let client: EgressClient
  let url: String
  let interval: Duration
  let logger: Logger

  /// `proxy` is `host:port` or `unix:/path`.
  public init?(auditor: Auditor, proxy: String, url: String, interval: Duration = .seconds(2), logger: Logger) {
    let address: ProxyAddress
    if proxy.hasPrefix("unix:") {
      address = .unix(path: String(proxy.dropFirst(5)))
    } else if let colon = proxy.lastIndex(of: ":"), let port = Int(proxy[proxy.index(after: colon)...]) {
      address = .tcp(host: String(proxy[..<colon]), port: port)
    } else {
      return nil
    }
    self.auditor = auditor
    self.client = EgressClient(proxy: address)
    self.url = url
    self.interval = interval
    self.logger = logger
  }

  public func run() async throws {
    do {
      try await cancelWhenGracefulShutdown {
        var shipped: String? = nil
        while true {
          if let note = self.auditor.latestCheckpoint, note != shipped {
            do {
              try await self.client.enqueue(
                OutboundRequest(
                  method: "POST", url: self.url, headers: [("content-type", "text/plain; charset=utf-8")],
                  body: Array(note.utf8)))
              shipped = note
            } catch {
              self.logger.warning("audit checkpoint not queued for shipping", metadata: ["error": "\(error)"])
            }
          }
          try await Task.sleep(for: self.interval)
        }
      }
    } catch is CancellationError {}
    await client.shutdown()
  }
}
