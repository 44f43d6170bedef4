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

  static func connection(_ refusals: Refusals) throws -> EmbeddedChannel {
    var protections = TransportConfiguration.Protections.defaults
    protections.writeStallTimeout = .seconds(5)
    let channel = EmbeddedChannel()
    try channel.pipeline.syncOperations.addHandler(
      ConnectionManager(config: .defaults, protections: protections, observer: refusals))
    try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    return channel
  }

  @Test func aSocketThatStaysFullClosesTheConnectionAfterTheStallTimeout() throws {
    let refusals = Refusals()
    let channel = try Self.connection(refusals)
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
    let channel = try Self.connection(refusals)
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
}
