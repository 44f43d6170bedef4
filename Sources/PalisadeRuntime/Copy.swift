/// Copies a strided view of `src` into contiguous `dst`: element `i` of the output (row-major over `shape`) is
/// read at element offset `base + sum(index[d] * strides[d])`. Covers Transpose, Slice, Expand and Gather.
func stridedCopy(
  _ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, shape: [Int], strides: [Int], base: Int, elementSize es: Int
) {
  let rank = shape.count
  if rank == 0 {
    dst.copyMemory(from: src + base * es, byteCount: es)
    return
  }
  let inner = shape[rank - 1]
  let istr = strides[rank - 1]
  var outer = 1
  for d in 0..<(rank - 1) { outer *= shape[d] }
  if inner == 0 || outer == 0 { return }
  withUnsafeTemporaryAllocation(of: Int.self, capacity: rank) { buf in
    guard let idx = buf.baseAddress else { return }
    idx.initialize(repeating: 0, count: rank)
    var off = base
    var out = dst
    for _ in 0..<outer {
      if istr == 1 {
        out.copyMemory(from: src + off * es, byteCount: inner * es)
      } else {
        switch es {
        case 4:
          let s = (src + off * 4).assumingMemoryBound(to: UInt32.self)
          let o = out.assumingMemoryBound(to: UInt32.self)
          for j in 0..<inner { o[j] = s[j * istr] }
        case 8:
          let s = (src + off * 8).assumingMemoryBound(to: UInt64.self)
          let o = out.assumingMemoryBound(to: UInt64.self)
          for j in 0..<inner { o[j] = s[j * istr] }
        default:
          let s = (src + off * es).assumingMemoryBound(to: UInt8.self)
          let o = out.assumingMemoryBound(to: UInt8.self)
          for j in 0..<inner {
            for b in 0..<es { o[j * es + b] = s[j * istr * es + b] }
          }
        }
      }
      out += inner * es
      var d = rank - 2
      while d >= 0 {
        idx[d] += 1
        off += strides[d]
        if idx[d] < shape[d] { break }
        off -= strides[d] * shape[d]
        idx[d] = 0
        d -= 1
      }
    }
  }
}

/// Drops size-1 dimensions and merges dimensions that are contiguous in the source, so copies run on the
/// fewest, longest rows.
func simplifyStrided(shape: [Int], strides: [Int]) -> (shape: [Int], strides: [Int]) {
  var s: [Int] = []
  var t: [Int] = []
  for (d, st) in zip(shape, strides) where d != 1 {
    if let lastD = s.last, let lastS = t.last, lastS == st * d {
      s[s.count - 1] = lastD * d
      t[t.count - 1] = st
    } else {
      s.append(d)
      t.append(st)
    }
  }
  return (s, t)
}
