import Crypto

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The bytes of one verified bundle file, exactly as they were hashed: read once into anonymous memory while their
/// digest was computed, then `mprotect`ed read-only. What the runtime parses and what the integrity monitor
/// re-hashes are these pages; nothing is read from disk again, so a file replaced after verification cannot reach
/// the runtime, and a stray write to the pages faults instead of silently changing a model.
public final class SealedBytes: @unchecked Sendable {
  // @unchecked: the pages are written only before `seal()`, by the one thread that filled them; afterwards they
  // are read-only to the whole process (the kernel enforces it).
  private let base: UnsafeMutableRawPointer
  private let mapped: Int
  /// Bytes in use (the mapping is rounded up to whole pages).
  public private(set) var count: Int
  private var sealed = false

  /// Maps `capacity` bytes (at least one page), readable and writable until `seal()`.
  init(capacity: Int) throws(BundleError) {
    let page = max(4096, sysconf(Int32(_SC_PAGESIZE)))
    guard capacity >= 0, capacity <= Int.max - page else {
      throw BundleError(.io, "cannot map \(capacity) bytes")
    }
    let pages = (max(capacity, 1) + page - 1) / page
    mapped = pages * page
    #if canImport(Darwin)
      let flags = MAP_PRIVATE | MAP_ANON
    #else
      let flags = MAP_PRIVATE | MAP_ANONYMOUS
    #endif
    guard let p = mmap(nil, mapped, PROT_READ | PROT_WRITE, flags, -1, 0), p != MAP_FAILED else {
      throw BundleError(
        .io, "cannot map \(capacity) bytes of memory for a verified file (\(String(cString: strerror(errno))))")
    }
    base = p
    count = 0
  }

  /// A sealed copy of `bytes` (tests, and files that were kept as arrays).
  public convenience init(copying bytes: [UInt8]) throws(BundleError) {
    try self.init(capacity: bytes.count)
    bytes.withUnsafeBytes { raw in
      if let src = raw.baseAddress { base.copyMemory(from: src, byteCount: raw.count) }
    }
    count = bytes.count
    try seal()
  }

  deinit { munmap(base, mapped) }

  /// Where the next bytes go while filling, and how many still fit.
  var fillPointer: (pointer: UnsafeMutableRawPointer, room: Int) { (base + count, mapped - count) }

  /// Records `n` more bytes written at `fillPointer`.
  func didFill(_ n: Int) { count += min(max(0, n), mapped - count) }

  /// Makes the pages read-only. No writes after this.
  func seal() throws(BundleError) {
    guard !sealed else { return }
    guard mprotect(base, mapped, PROT_READ) == 0 else {
      throw BundleError(.io, "cannot make a verified file's memory read-only (\(String(cString: strerror(errno))))")
    }
    sealed = true
  }

  /// Runs `body` over the bytes (read-only).
  public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
    try body(UnsafeRawBufferPointer(start: base, count: count))
  }

  /// The bytes as an array (a copy).
  public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }

  /// SHA-256 of the bytes, lowercase hex.
  public func sha256() -> String {
    Hex.encode(SHA256.hash(data: UnsafeRawBufferPointer(start: base, count: count)))
  }

  /// Test hook: flips one byte, briefly lifting the protection (what a memory fault or an attacker with a write
  /// primitive would do).
  public func flipByteForTesting(at offset: Int) {
    guard offset >= 0, offset < count else { return }
    mprotect(base, mapped, PROT_READ | PROT_WRITE)
    base.storeBytes(of: base.load(fromByteOffset: offset, as: UInt8.self) ^ 0x01, toByteOffset: offset, as: UInt8.self)
    mprotect(base, mapped, sealed ? PROT_READ : PROT_READ | PROT_WRITE)
  }
}
