#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Cache-blocking parameters of the SGEMM (in elements).
///
/// Chosen for this class of machine (AMD EPYC Zen 4: 32 KiB L1d, 1 MiB L2 per core, 32 MiB shared L3) and
/// checked by measurement (kernel-bench; KC 256..512 and MC 96..288 are within noise of each other):
/// - a KC x NR packed B micro-panel (320 * 16 * 4 B = 20 KiB) plus an A micro-panel (7.5 KiB) stay in L1;
/// - the MC x KC packed A block (180 KiB) stays in L2;
/// - the KC x NC packed B panel (3.75 MiB per thread) lives in L3.
/// A larger KC also means fewer passes over C, whose tiles are prefetched at the start of each micro-kernel.
@usableFromInline
enum GemmBlocking {
  /// Micro-tile rows (broadcast A values).
  static let mr = 6
  /// Micro-tile columns (two 8-float vectors).
  static let nr = 16
  static let mc = 144
  static let kc = 320
  static let nc = 3072
  /// Up to this many rows of C (per thread), B (if not transposed) is read in place instead of packed.
  static let directBMaxRows = 96

  /// Rows of the next micro-tile when `left` rows of a block remain: 6, except that 8 and 4 remaining rows run
  /// as 4-row tiles (so 32 rows are 4 x 6 + 2 x 4 tiles, not 5 x 6 plus a 6-row tile computed for 2 rows).
  @inline(__always)
  static func tileRows(_ left: Int) -> Int {
    left == 8 || left == 4 ? 4 : min(mr, left)
  }
}

/// Per-thread packing buffers for SGEMM, allocated once per thread on first use and freed when the thread exits.
///
/// Pool threads allocate theirs at start-up; any other thread that calls `sgemm` gets its own on first call.
final class GemmScratch {
  /// Packed A block: MC x KC, padded to whole MR panels.
  let packedA: UnsafeMutablePointer<Float>
  /// Packed B panel: KC x NC, padded to whole NR panels.
  let packedB: UnsafeMutablePointer<Float>
  /// One micro-tile for edge tiles.
  let tile: UnsafeMutablePointer<Float>
  private let raw: UnsafeMutableRawPointer

  private init() {
    let aCount = ((GemmBlocking.mc + GemmBlocking.mr - 1) / GemmBlocking.mr) * GemmBlocking.mr * GemmBlocking.kc
    let bCount = ((GemmBlocking.nc + GemmBlocking.nr - 1) / GemmBlocking.nr) * GemmBlocking.nr * GemmBlocking.kc
    let tileCount = GemmBlocking.mr * GemmBlocking.nr
    // Each region starts on a 64-byte boundary so SIMD8 loads of packed data are aligned.
    let aBytes = (aCount * 4 + 63) & ~63
    let bBytes = (bCount * 4 + 63) & ~63
    raw = UnsafeMutableRawPointer.allocate(byteCount: aBytes + bBytes + tileCount * 4, alignment: 64)
    packedA = raw.bindMemory(to: Float.self, capacity: aCount)
    packedB = (raw + aBytes).bindMemory(to: Float.self, capacity: bCount)
    tile = (raw + aBytes + bBytes).bindMemory(to: Float.self, capacity: tileCount)
  }

  deinit {
    raw.deallocate()
  }

  private static let key: pthread_key_t = {
    var key = pthread_key_t()
    let rc = pthread_key_create(&key) { value in
      guard let value else { return }
      Unmanaged<GemmScratch>.fromOpaque(value).release()
    }
    precondition(rc == 0, "pthread_key_create failed")
    return key
  }()

  /// The calling thread's buffers.
  @inline(__always)
  static func current() -> GemmScratch {
    if let value = pthread_getspecific(key) {
      return Unmanaged<GemmScratch>.fromOpaque(value).takeUnretainedValue()
    }
    let scratch = GemmScratch()
    pthread_setspecific(key, Unmanaged.passRetained(scratch).toOpaque())
    return scratch
  }

  static func warmUp() {
    _ = current()
  }
}
