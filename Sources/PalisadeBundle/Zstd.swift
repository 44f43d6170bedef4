import CZstd

/// Streaming zstd compression into a sink (used by the packer and by tests).
final class ZstdCompressor {
  private let cctx: OpaquePointer
  private var output: [UInt8]

  init(level: Int32) throws(BundleError) {
    guard let cctx = ZSTD_createCCtx() else { throw BundleError(.io, "zstd: cannot create a compression context") }
    self.cctx = cctx
    output = [UInt8](repeating: 0, count: ZSTD_CStreamOutSize())
    try check(ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, level))
    try check(ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1))
  }

  deinit { ZSTD_freeCCtx(cctx) }

  private func check(_ code: Int) throws(BundleError) {
    if ZSTD_isError(code) != 0 { throw BundleError(.io, "zstd: \(String(cString: ZSTD_getErrorName(code)))") }
  }

  /// Compresses `input`; `finish` ends the frame. Compressed bytes go to `sink` as they are produced.
  func compress(
    _ input: UnsafeRawBufferPointer, finish: Bool, sink: (UnsafeRawBufferPointer) throws(BundleError) -> Void
  ) throws(BundleError) {
    var inBuf = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
    let capacity = output.count
    while true {
      var remaining = 0
      var produced = 0
      let code = output.withUnsafeMutableBytes { out -> Int in
        var outBuf = ZSTD_outBuffer(dst: out.baseAddress, size: capacity, pos: 0)
        let r = ZSTD_compressStream2(cctx, &outBuf, &inBuf, finish ? ZSTD_e_end : ZSTD_e_continue)
        produced = outBuf.pos
        return r
      }
      try check(code)
      remaining = code
      if produced > 0 {
        try BundleError.typed {
          try output.withUnsafeBytes { out in try sink(UnsafeRawBufferPointer(rebasing: out[0..<produced])) }
        }
      }
      if finish {
        if remaining == 0 { return }
      } else if inBuf.pos == inBuf.size {
        return
      }
    }
  }

  /// Convenience for small inputs (tests): the whole frame in memory.
  static func compress(_ bytes: [UInt8], level: Int32 = 3) throws(BundleError) -> [UInt8] {
    let c = try ZstdCompressor(level: level)
    var out: [UInt8] = []
    try BundleError.typed {
      try bytes.withUnsafeBytes { raw in
        try c.compress(raw, finish: true) { (chunk) throws(BundleError) in out.append(contentsOf: chunk) }
      }
    }
    return out
  }
}

/// Streaming zstd decompression with a bounded window.
final class ZstdDecompressor {
  private let dctx: OpaquePointer
  /// 2^27 = 128 MiB: the largest window we allocate for, whatever the frame asks.
  static let windowLogMax: Int32 = 27
  static var inputChunk: Int { ZSTD_DStreamInSize() }
  static var outputChunk: Int { ZSTD_DStreamOutSize() }

  init() throws(BundleError) {
    guard let dctx = ZSTD_createDCtx() else { throw BundleError(.io, "zstd: cannot create a decompression context") }
    self.dctx = dctx
    let code = ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, Self.windowLogMax)
    if ZSTD_isError(code) != 0 { throw BundleError(.io, "zstd: \(String(cString: ZSTD_getErrorName(code)))") }
  }

  deinit { ZSTD_freeDCtx(dctx) }

  /// Declared content size of the frame starting at `prefix`, if the frame header says.
  static func declaredContentSize(_ prefix: UnsafeRawBufferPointer) -> UInt64? {
    let size = ZSTD_getFrameContentSize(prefix.baseAddress, prefix.count)
    // ZSTD_CONTENTSIZE_UNKNOWN / _ERROR are (0ULL - 1) / (0ULL - 2) macros, not imported into Swift.
    if size == UInt64.max || size == UInt64.max - 1 { return nil }
    return size
  }

  /// One decompression step: consumes from `input` (advancing `pos`), writes into `output`.
  /// Returns (bytes produced, zstd's hint: 0 when a frame is complete and fully flushed).
  func step(_ input: inout ZSTD_inBuffer, into output: UnsafeMutableRawBufferPointer) throws(BundleError) -> (Int, Int)
  {
    var outBuf = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
    let code = ZSTD_decompressStream(dctx, &outBuf, &input)
    if ZSTD_isError(code) != 0 {
      throw BundleError(.unsafeArchive, "archive: zstd error: \(String(cString: ZSTD_getErrorName(code)))")
    }
    return (outBuf.pos, code)
  }
}
