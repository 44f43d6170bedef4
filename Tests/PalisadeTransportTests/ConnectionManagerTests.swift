import NIOCore
import NIOEmbedded
import NIOHTTP2
import Synchronization
import Testing

@testable import PalisadeTransport

/// The connection manager's guard against a peer that stops reading the socket: every byte waiting for the socket
/// counts, not only response DATA (a peer sent only trailers-only answers, errors, must be cut off too).
@Suite struct ConnectionManagerTests {
  final class Refusals: TransportObserver {
    let reasons = Mutex<[String]>([])
    func transportRefused(reason: String) { reasons.withLock { $0.append(reason) } }
    func connectionsOpen(_ count: Int) {}
  }

  static func connection(_ refusals: Refusals) throws -> (EmbeddedChannel, ConnectionManager) {
    var protections = TransportConfiguration.Protections.defaults
    protections.writeStallTimeout = .seconds(5)
    let channel = EmbeddedChannel()
    let manager = ConnectionManager(config: .defaults, protections: protections, observer: refusals)
    try channel.pipeline.syncOperations.addHandler(manager)
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    return (channel, manager)
  }

  @Test func aSocketThatStaysFullClosesTheConnectionAfterTheStallTimeout() throws {
    let refusals = Refusals()
    let (channel, _) = try Self.connection(refusals)
    channel.isWritable = false
    channel.pipeline.fireChannelWritabilityChanged()
    channel.embeddedEventLoop.advanceTime(by: .milliseconds(4_900))
    #expect(refusals.reasons.withLock { $0 }.isEmpty)
    #expect(channel.isActive)

    channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
    #expect(refusals.reasons.withLock { $0 } == ["write_stalled"])
    let frame = try #require(try channel.readOutbound(as: HTTP2Frame.self))
    guard case .goAway(_, let code, _) = frame.payload else {
      Issue.record("expected GOAWAY, got \(frame.payload)")
      return
    }
    #expect(code == .enhanceYourCalm)
    channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
    #expect(!channel.isActive, "closed shortly after the GOAWAY")
  }

  @Test func aSocketThatDrainsInTimeKeepsTheConnection() throws {
    let refusals = Refusals()
    let (channel, _) = try Self.connection(refusals)
    for _ in 0..<3 {
      channel.isWritable = false
      channel.pipeline.fireChannelWritabilityChanged()
      channel.embeddedEventLoop.advanceTime(by: .seconds(4))
      channel.isWritable = true
      channel.pipeline.fireChannelWritabilityChanged()
      channel.embeddedEventLoop.advanceTime(by: .seconds(2))
    }
    #expect(refusals.reasons.withLock { $0 }.isEmpty)
    #expect(channel.isActive)
    _ = try? channel.finish()
  }

  /// A large response to a slow reader keeps the socket full for longer than the timeout, but its DATA keeps
  /// reaching the socket: that is progress, not a stall.
  @Test func aSlowReaderWhoseResponseKeepsMovingIsKept() throws {
    let refusals = Refusals()
    let (channel, manager) = try Self.connection(refusals)
    channel.isWritable = false
    channel.pipeline.fireChannelWritabilityChanged()
    for _ in 0..<6 {
      let written = channel.embeddedEventLoop.makePromise(of: Void.self)
      manager.outboundWritten(16_384, done: written.futureResult)
      channel.embeddedEventLoop.advanceTime(by: .seconds(3))
      written.succeed()
    }
    #expect(refusals.reasons.withLock { $0 }.isEmpty, "18 s unwritable, with progress every 3 s")
    #expect(channel.isActive)
    channel.embeddedEventLoop.advanceTime(by: .seconds(6))
    #expect(refusals.reasons.withLock { $0 } == ["write_stalled"], "then 6 s without progress")
  }
}
