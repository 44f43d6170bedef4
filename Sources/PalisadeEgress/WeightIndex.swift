import Foundation

/// Fingerprints of model weight files: a rolling hash of every W-byte window at every S-th offset of each file.
/// Outbound bytes are hashed at every offset and looked up, so any leaked run of at least W+S-1 consecutive bytes
/// of a weight file contains one indexed window and is caught, wherever it starts.
///
/// The hash is a Rabin-Karp polynomial over a random byte table, modulo 2^64; a 64-bit match is taken as a hit
/// (the chance of an innocent collision is about n·m/2^64). Lookups go through a bitmap first, then a binary search
/// of the sorted hashes: 8 bytes of memory per indexed window plus about 2 bytes of bitmap.
public final class WeightIndex: Sendable {
  /// W.
  public let window: Int
  /// S.
  public let stride: Int
  private let table: [UInt64]
  private let base: UInt64 = 0x9E37_79B9_7F4A_7C15 | 1
  private let basePow: UInt64  // base^(W-1)
  private let sorted: [UInt64]
  private let owners: [UInt16]
  private let bitmap: [UInt64]
  private let bitmapShift: UInt64
  /// Names of the indexed sources (bundle and file), by owner number.
  public let sources: [String]

  /// How many windows are indexed.
  public var count: Int { sorted.count }

  /// Collects windows from files, then freezes into a ``WeightIndex``.
  public struct Builder {
    let window: Int
    let stride: Int
    let minDistinct: Int
    let table: [UInt64]
    var entries: [(UInt64, UInt16)] = []
    var sources: [String] = []
    public private(set) var indexedBytes = 0

    public init(window: Int, stride: Int, minDistinctBytes: Int) {
      self.window = window
      self.stride = stride
      self.minDistinct = minDistinctBytes
      // A fixed table: the index and the scans live in one process, and a fixed table keeps tests reproducible.
      var state: UInt64 = 0x5041_4C49_5341_4445
      var t: [UInt64] = []
      for _ in 0..<256 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        t.append(z ^ (z >> 31))
      }
      table = t
    }

    /// Indexes `bytes` (one weight file) under `source`.
    public mutating func add(_ bytes: UnsafeRawBufferPointer, source: String) {
      guard bytes.count >= window, sources.count < Int(UInt16.max), let owner = UInt16(exactly: sources.count) else {
        return
      }
      sources.append(source)
      indexedBytes += bytes.count
      var offset = 0
      var seen = [Bool](repeating: false, count: 256)
      while offset + window <= bytes.count {
        // Constant or nearly constant windows (padding, zero tensors) would match innocent traffic.
        for i in 0..<256 { seen[i] = false }
        var distinct = 0
        var h: UInt64 = 0
        for i in offset..<(offset + window) {
          let b = Int(bytes[i])
          if !seen[b] {
            seen[b] = true
            distinct += 1
          }
          h = h &* WeightIndex.baseConstant &+ table[b]
        }
        if distinct >= minDistinct { entries.append((h, owner)) }
        offset += stride
      }
    }

    public func build() -> WeightIndex { WeightIndex(self) }
  }

  static let baseConstant: UInt64 = 0x9E37_79B9_7F4A_7C15 | 1

  private init(_ b: Builder) {
    window = b.window
    stride = b.stride
    table = b.table
    var p: UInt64 = 1
    for _ in 0..<(b.window - 1) { p = p &* Self.baseConstant }
    basePow = p
    let entries = b.entries.sorted { $0.0 < $1.0 }
    sorted = entries.map(\.0)
    owners = entries.map(\.1)
    sources = b.sources
    // About 16 bitmap bits per entry, at least 2^16 and at most 2^31 bits.
    var bits = 16
    while bits < 31 && (1 << bits) < entries.count * 16 { bits += 1 }
    bitmapShift = UInt64(64 - bits)
    var map = [UInt64](repeating: 0, count: (1 << bits) / 64)
    for h in sorted {
      let slot = Int(h >> UInt64(64 - bits))
      map[slot >> 6] |= 1 << UInt64(slot & 63)
    }
    bitmap = map
  }

  /// The source of the first indexed window found in `bytes`, if any.
  public func firstMatch(in bytes: UnsafeRawBufferPointer) -> String? {
    guard !sorted.isEmpty, bytes.count >= window else { return nil }
    // Raw pointers in the hot loop: one multiply-add, one table load and one bitmap probe per byte.
    let hit: UInt64? = table.withUnsafeBufferPointer { t in
      bitmap.withUnsafeBufferPointer { map -> UInt64? in
        let base = self.base
        let basePow = self.basePow
        let shift = bitmapShift
        let window = self.window
        let count = bytes.count
        var h: UInt64 = 0
        for i in 0..<window { h = h &* base &+ t[Int(bytes[i])] }
        var i = window
        while true {
          let slot = Int(truncatingIfNeeded: h >> shift)
          if map[slot &>> 6] & (1 &<< UInt64(slot & 63)) != 0, lookup(h) != nil { return h }
          guard i < count else { return nil }
          h = (h &- t[Int(bytes[i &- window])] &* basePow) &* base &+ t[Int(bytes[i])]
          i &+= 1
        }
      }
    }
    guard let hit, let owner = lookup(hit) else { return nil }
    return sources[Int(owner)]
  }

  public func firstMatch(in bytes: [UInt8]) -> String? {
    bytes.withUnsafeBytes { firstMatch(in: $0) }
  }

  private func lookup(_ h: UInt64) -> UInt16? {
    var lo = 0
    var hi = sorted.count
    while lo < hi {
      let mid = (lo + hi) / 2
      if sorted[mid] < h { lo = mid + 1 } else { hi = mid }
    }
    return lo < sorted.count && sorted[lo] == h ? owners[lo] : nil
  }
}
