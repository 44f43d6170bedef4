public import GRPCCore
public import NIOCore

/// Message bytes as the transport hands them to grpc-swift: a `ByteBuffer` (usually a slice of what arrived on the
/// wire, no copy).
public struct MessageBytes: GRPCContiguousBytes, Sendable, Hashable {
  public var buffer: ByteBuffer

  public init(_ buffer: ByteBuffer) { self.buffer = buffer }

  public init(repeating byte: UInt8, count: Int) {
    buffer = ByteBuffer(repeating: byte, count: count)
  }

  public init(_ sequence: some Sequence<UInt8>) {
    buffer = ByteBuffer(bytes: sequence)
  }

  public var count: Int { buffer.readableBytes }

  public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
    try buffer.withUnsafeReadableBytes(body)
  }

  public mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
    try buffer.withUnsafeMutableReadableBytes(body)
  }
}
