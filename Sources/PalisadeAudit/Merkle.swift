import Crypto
public import Foundation

/// RFC 6962 / RFC 9162 Merkle tree hashing with SHA-256: leaf = SHA-256(0x00 || data),
/// node = SHA-256(0x01 || left || right), and the tree of `n` leaves splits at the largest power of two below `n`.
/// Hashes are 32-byte arrays.
public enum Merkle {
  /// The size of every hash, in bytes.
  public static let hashSize = 32

  /// MTH({}): SHA-256 of the empty string.
  public static let emptyRoot: [UInt8] = Array(SHA256.hash(data: [UInt8]()))

  /// The leaf hash of `data`: SHA-256(0x00 || data).
  public static func leafHash<D: DataProtocol>(_ data: D) -> [UInt8] {
    var h = SHA256()
    withUnsafeBytes(of: UInt8(0x00)) { h.update(bufferPointer: $0) }
    h.update(data: data)
    return h.finalize().withUnsafeBytes { Array($0) }
  }

  /// An interior node: SHA-256(0x01 || left || right).
  public static func nodeHash(_ left: [UInt8], _ right: [UInt8]) -> [UInt8] {
    var h = SHA256()
    h.update(data: [0x01] as [UInt8])
    h.update(data: left)
    h.update(data: right)
    return Array(h.finalize())
  }

  /// The largest power of two strictly below `n` (n ≥ 2).
  static func split(_ n: UInt64) -> UInt64 {
    precondition(n >= 2)
    return UInt64(1) << (63 - (n - 1).leadingZeroBitCount)
  }

  /// MTH over leaf hashes (the RFC recursion; O(n)). For stored trees use `MerkleTreeStore`.
  public static func root(leafHashes: ArraySlice<[UInt8]>) -> [UInt8] {
    switch leafHashes.count {
    case 0: return emptyRoot
    case 1: return leafHashes[leafHashes.startIndex]
    default:
      let k = Int(split(UInt64(leafHashes.count)))
      let mid = leafHashes.startIndex + k
      return nodeHash(root(leafHashes: leafHashes[..<mid]), root(leafHashes: leafHashes[mid...]))
    }
  }

  /// RFC 9162 §2.1.3.2: does `proof` lead from `leafHash` at `index` to `root` of a tree of `treeSize` leaves?
  /// Malformed input is `false`, never a trap.
  public static func verifyInclusion(
    leafHash: [UInt8], index: UInt64, treeSize: UInt64, proof: [[UInt8]], root: [UInt8]
  ) -> Bool {
    guard index < treeSize, leafHash.count == hashSize, root.count == hashSize,
      proof.allSatisfy({ $0.count == hashSize })
    else { return false }
    var fn = index
    var sn = treeSize - 1
    var r = leafHash
    for p in proof {
      if sn == 0 { return false }
      if fn & 1 == 1 || fn == sn {
        r = nodeHash(p, r)
        if fn & 1 == 0 {
          while fn & 1 == 0 && fn != 0 {
            fn >>= 1
            sn >>= 1
          }
        }
      } else {
        r = nodeHash(r, p)
      }
      fn >>= 1
      sn >>= 1
    }
    return sn == 0 && r == root
  }

  /// RFC 9162 §2.1.4.2: is the tree of `firstSize` leaves with `firstRoot` a prefix of the tree of `secondSize`
  /// leaves with `secondRoot`? Equal sizes need an empty proof and equal roots; size 0 needs the empty root.
  public static func verifyConsistency(
    firstSize: UInt64, firstRoot: [UInt8], secondSize: UInt64, secondRoot: [UInt8], proof: [[UInt8]]
  ) -> Bool {
    guard firstRoot.count == hashSize, secondRoot.count == hashSize, proof.allSatisfy({ $0.count == hashSize }),
      firstSize <= secondSize
    else { return false }
    if firstSize == secondSize { return proof.isEmpty && firstRoot == secondRoot }
    if firstSize == 0 { return proof.isEmpty && firstRoot == emptyRoot }
    if proof.isEmpty { return false }
    var path = proof
    if firstSize & (firstSize - 1) == 0 { path.insert(firstRoot, at: 0) }
    var fn = firstSize - 1
    var sn = secondSize - 1
    while fn & 1 == 1 {
      fn >>= 1
      sn >>= 1
    }
    var fr = path[0]
    var sr = path[0]
    for c in path.dropFirst() {
      if sn == 0 { return false }
      if fn & 1 == 1 || fn == sn {
        fr = nodeHash(c, fr)
        sr = nodeHash(c, sr)
        if fn & 1 == 0 {
          while fn & 1 == 0 && fn != 0 {
            fn >>= 1
            sn >>= 1
          }
        }
      } else {
        sr = nodeHash(sr, c)
      }
      fn >>= 1
      sn >>= 1
    }
    return fr == firstRoot && sr == secondRoot && sn == 0
  }
}

/// The incremental state of a growing tree: the roots of its maximal complete subtrees, left to right (a compact
/// range over [0, size)). Appending is O(log n) hashes worst case, O(1) amortised; memory is O(log n). This is what
/// the writer keeps; proofs need a `MerkleTreeStore`.
public struct CompactRange: Sendable, Equatable {
  /// Number of leaves.
  public private(set) var size: UInt64 = 0
  /// Roots of the complete subtrees, largest (leftmost) first.
  public private(set) var subtreeRoots: [[UInt8]] = []

  public init() {}

  /// Appends one leaf hash.
  public mutating func append(leafHash: [UInt8]) {
    var node = leafHash
    var s = size
    // Each trailing one bit of the old size is a complete subtree of equal height to merge with.
    while s & 1 == 1 {
      node = Merkle.nodeHash(subtreeRoots.removeLast(), node)
      s >>= 1
    }
    subtreeRoots.append(node)
    size += 1
  }

  /// MTH of the leaves so far: the subtree roots folded right to left.
  public var root: [UInt8] {
    guard var acc = subtreeRoots.last else { return Merkle.emptyRoot }
    for r in subtreeRoots.dropLast().reversed() { acc = Merkle.nodeHash(r, acc) }
    return acc
  }
}

/// Every complete, aligned subtree hash of a tree, level by level (level 0 = the leaf hashes), in flat buffers.
/// Memory is about 2 × 32 bytes per leaf; any MTH(D[a:b]) that the RFC recursions ask for is O(log n) lookups,
/// so roots of earlier sizes, inclusion proofs and consistency proofs are O(log² n) at worst.
public struct MerkleTreeStore: Sendable {
  private var levels: [[UInt8]] = [[]]

  public init() {}

  /// Number of leaves.
  public var size: UInt64 { UInt64(levels[0].count / Merkle.hashSize) }

  private func node(level: Int, index: UInt64) -> [UInt8] {
    let start = Int(index) * Merkle.hashSize
    return Array(levels[level][start..<start + Merkle.hashSize])
  }

  /// The hash of leaf `index`.
  public func leafHash(_ index: UInt64) -> [UInt8] { node(level: 0, index: index) }

  /// Appends one leaf hash, storing the complete subtrees it finishes.
  public mutating func append(leafHash: [UInt8]) {
    precondition(leafHash.count == Merkle.hashSize)
    levels[0].append(contentsOf: leafHash)
    var level = 0
    var count = size
    var hash = leafHash
    while count & 1 == 0 {
      let left = node(level: level, index: count - 2)
      hash = Merkle.nodeHash(left, hash)
      level += 1
      if levels.count == level { levels.append([]) }
      levels[level].append(contentsOf: hash)
      count >>= 1
    }
  }

  /// MTH(D[start : start+count]) for a range the RFC recursions produce (left parts are aligned complete subtrees).
  func subtreeHash(start: UInt64, count: UInt64) -> [UInt8] {
    if count == 0 { return Merkle.emptyRoot }
    if count & (count - 1) == 0 && start % count == 0 {
      return node(level: count.trailingZeroBitCount, index: start / count)
    }
    let k = Merkle.split(count)
    return Merkle.nodeHash(subtreeHash(start: start, count: k), subtreeHash(start: start + k, count: count - k))
  }

  /// MTH of the first `treeSize` leaves.
  public func root(treeSize: UInt64) -> [UInt8]? {
    guard treeSize <= size else { return nil }
    return subtreeHash(start: 0, count: treeSize)
  }

  /// RFC 6962 §2.1.1 PATH(index, D[treeSize]), leaf side first; nil when index ≥ treeSize or treeSize > size.
  public func inclusionProof(index: UInt64, treeSize: UInt64) -> [[UInt8]]? {
    guard index < treeSize, treeSize <= size else { return nil }
    var proof: [[UInt8]] = []
    path(index, start: 0, count: treeSize, into: &proof)
    return proof
  }

  private func path(_ m: UInt64, start: UInt64, count: UInt64, into proof: inout [[UInt8]]) {
    guard count > 1 else { return }
    let k = Merkle.split(count)
    if m < k {
      path(m, start: start, count: k, into: &proof)
      proof.append(subtreeHash(start: start + k, count: count - k))
    } else {
      path(m - k, start: start + k, count: count - k, into: &proof)
      proof.append(subtreeHash(start: start, count: k))
    }
  }

  /// RFC 6962 §2.1.2 PROOF(first, D[second]); nil unless 0 < first ≤ second ≤ size (first == second is empty).
  public func consistencyProof(first: UInt64, second: UInt64) -> [[UInt8]]? {
    guard first > 0, first <= second, second <= size else { return nil }
    var proof: [[UInt8]] = []
    subproof(first, start: 0, count: second, complete: true, into: &proof)
    return proof
  }

  private func subproof(_ m: UInt64, start: UInt64, count: UInt64, complete: Bool, into proof: inout [[UInt8]]) {
    if m == count {
      if !complete { proof.append(subtreeHash(start: start, count: count)) }
      return
    }
    let k = Merkle.split(count)
    if m <= k {
      subproof(m, start: start, count: k, complete: complete, into: &proof)
      proof.append(subtreeHash(start: start + k, count: count - k))
    } else {
      subproof(m - k, start: start + k, count: count - k, complete: false, into: &proof)
      proof.append(subtreeHash(start: start, count: k))
    }
  }
}
