import Crypto
import Foundation
public import Logging
import PalisadeOutbound
public import ServiceLifecycle
import Synchronization

/// Ships every new signed audit checkpoint to a collector (`egress.checkpoint_url`), through the egress sidecar
/// only (`egress.proxy`): a collector outside holds a copy the server cannot rewrite, so a log rewritten after
/// the fact no longer matches what was shipped. Checkpoints queue and retry while the sidecar is down; nothing
/// is ever sent directly.
///
/// Delivery is at least once: a request the sidecar forwarded but whose answer was lost (the sidecar killed
/// meanwhile) is sent again. Every post therefore carries `x-palisade-checkpoint-size` (the tree size: a sequence
/// number, strictly increasing from one checkpoint of a log to the next) and `idempotency-key` (the SHA-256 of the
/// note, hex): a collector keeps the first post per key and drops repeats. Two different notes for one size are
/// not repeats but a forked log, evidence to keep. After a restart the latest checkpoint is shipped again (the
/// queue lives in memory), so a collector always ends up with the newest one; intermediate checkpoints polled
/// past are not shipped: each covers every record before it.
///
/// At graceful shutdown the shipper stops last (`ServerRuntime.run` lists it first): the gRPC server has drained
/// and the audit log has written its final checkpoint, which the shipper then sends and waits for, at most
/// `finalDelivery`, before it stops. In Kubernetes the sidecar is a native sidecar (an init container with
/// `restartPolicy: Always`), which the kubelet stops only after the server has exited.
public final class CheckpointShipper: Service, Sendable {
  let auditor: Auditor
  let client: EgressClient
  let url: String
  let interval: Duration
  let finalDelivery: Duration
  let logger: Logger
  /// The note last queued for shipping.
  private let shipped = Mutex<String?>(nil)

  /// `proxy` is `host:port` or `unix:/path`.
  public init?(
    auditor: Auditor, proxy: String, url: String, interval: Duration = .seconds(2),
    finalDelivery: Duration = .seconds(5), logger: Logger
  ) {
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
    self.finalDelivery = finalDelivery
    self.logger = logger
  }

  public func run() async throws {
    do {
      try await cancelWhenGracefulShutdown {
        while true {
          await self.queueLatest()
          try await Task.sleep(for: self.interval)
        }
      }
    } catch is CancellationError {}
    // Graceful shutdown reaches this service after the audit log has closed: its final checkpoint is the latest.
    // (If the group was cancelled instead, the sleep below ends at once.)
    await queueLatest()
    let deadline = ContinuousClock.now + finalDelivery
    while await client.pending > 0, ContinuousClock.now < deadline, !Task.isCancelled {
      try? await Task.sleep(for: .milliseconds(20))
    }
    let left = await client.pending
    if left == 0 {
      logger.info(
        "audit checkpoints shipped", metadata: ["tree_size": "\(auditor.latestSignedCheckpoint?.treeSize ?? 0)"])
    } else {
      logger.warning(
        "audit checkpoints not shipped before shutdown; the next start ships the latest",
        metadata: ["pending": "\(left)", "waited": "\(finalDelivery)"])
    }
    await client.shutdown()
  }

  /// Queues the latest checkpoint unless it is the one queued last.
  private func queueLatest() async {
    guard let checkpoint = auditor.latestSignedCheckpoint, checkpoint.note != shipped.withLock({ $0 }) else { return }
    let note = checkpoint.note
    do {
      try await client.enqueue(
        OutboundRequest(
          method: "POST", url: url,
          headers: [
            ("content-type", "text/plain; charset=utf-8"),
            ("x-palisade-checkpoint-size", String(checkpoint.treeSize)),
            ("idempotency-key", Self.idempotencyKey(note)),
          ],
          body: Array(note.utf8)))
      shipped.withLock { $0 = note }
    } catch {
      logger.warning("audit checkpoint not queued for shipping", metadata: ["error": "\(error)"])
    }
  }

  /// The SHA-256 of the note, lowercase hex: equal for a repeat of the same checkpoint, and only for it.
  static func idempotencyKey(_ note: String) -> String { Auditor.hex(SHA256.hash(data: Array(note.utf8))) }
}
