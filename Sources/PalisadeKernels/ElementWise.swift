#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Element-wise binary operators with numpy broadcasting.
public enum BinaryOp: Sendable, Equatable, Hashable {
  case add, sub, mul, div
  /// `a ** b` (C `powf` semantics; exponents 0.5, 1, 2, 3 take exact fast paths).
  case pow
}

/// Element-wise unary operators.
public enum UnaryOp: Sendable, Equatable, Hashable {
  case relu, gelu, erf, sigmoid, tanh, sqrt, exp, neg, abs, reciprocal
}

/// The numpy broadcast of two shapes (right-aligned; each pair of dims equal or one of them 1).
public func broadcastShape(_ a: [Int], _ b: [Int]) throws(KernelError) -> [Int] {
  let rank = max(a.count, b.count)
  var out = [Int](repeating: 1, count: rank)
  for i in 0..<rank {
    let da = i < rank - a.count ? 1 : a[i - (rank - a.count)]
    let db = i < rank - b.count ? 1 : b[i - (rank - b.count)]
    guard da >= 0, db >= 0 else { throw .invalidParameter("negative dimension in \(a) or \(b)") }
    if da == db || db == 1 {
      out[i] = da
    } else if da == 1 {
      out[i] = db
    } else {
      throw .shapeMismatch("cannot broadcast \(a) with \(b)")
    }
  }
  return out
}

/// `out = a <op> b` with numpy broadcasting. `outShape` must equal `broadcastShape(aShape, bShape)`.
///
/// `out` may alias `a` or `b` when that operand already has the output shape. Shapes of any rank up to 16.
/// Allocates nothing: the stride tables live on the stack.
public func binary(
  _ op: BinaryOp,
  _ a: UnsafePointer<Float>, shape aShape: [Int],
  _ b: UnsafePointer<Float>, shape bShape: [Int],
  out: UnsafeMutablePointer<Float>, shape outShape: [Int]
) throws(KernelError) {
  let rank = outShape.count
  guard rank <= 16 else { throw .invalidParameter("rank \(rank) above 16") }
  guard aShape.count <= rank, bShape.count <= rank else {
    throw .shapeMismatch("operand rank above output rank \(outShape)")
  }
  let total = try elementCount(outShape)
  if total == 0 { return }
  // Validate: every operand dim is 1 or the output dim.
  for i in 0..<rank {
    let o = outShape[i]
    let ia = i - (rank - aShape.count)
    let ib = i - (rank - bShape.count)
    if ia >= 0, aShape[ia] != o, aShape[ia] != 1 {
      throw .shapeMismatch("\(aShape) does not broadcast to \(outShape)")
    }
    if ib >= 0, bShape[ib] != o, bShape[ib] != 1 {
      throw .shapeMismatch("\(bShape) does not broadcast to \(outShape)")
    }
    if (ia < 0 || aShape[ia] == 1) && (ib < 0 || bShape[ib] == 1) && o != 1 {
      throw .shapeMismatch("\(aShape) and \(bShape) do not broadcast to \(outShape)")
    }
  }
  if aShape == outShape && bShape == outShape {
    binaryContiguous(op, a, 1, b, 1, out, total)
    return
  }
  withUnsafeTemporaryAllocation(of: Int.self, capacity: 4 * max(rank, 1)) { table in
    let dims = table.baseAddress.unsafelyUnwrapped
    let sa = dims + rank
    let sb = dims + 2 * rank
    let counter = dims + 3 * rank
    // Element strides of a and b in output coordinates (0 where broadcast).
    var strideA = 1
    var strideB = 1
    for i in stride(from: rank - 1, through: 0, by: -1) {
      dims[i] = outShape[i]
      let ia = i - (rank - aShape.count)
      let ib = i - (rank - bShape.count)
      let da = ia >= 0 ? aShape[ia] : 1
      let db = ib >= 0 ? bShape[ib] : 1
      sa[i] = da == 1 ? 0 : strideA
      sb[i] = db == 1 ? 0 : strideB
      strideA *= da
      strideB *= db
    }
    // Coalesce adjacent dims whose strides chain (including both-broadcast), dropping size-1 dims.
    var n = 0
    for i in 0..<rank where dims[i] != 1 {
      if n > 0, sa[n - 1] == sa[i] * dims[i], sb[n - 1] == sb[i] * dims[i] {
        dims[n - 1] *= dims[i]
        sa[n - 1] = sa[i]
        sb[n - 1] = sb[i]
      } else {
        dims[n] = dims[i]
        sa[n] = sa[i]
        sb[n] = sb[i]
        n += 1
      }
    }
    if n == 0 {
      binaryContiguous(op, a, 0, b, 0, out, 1)
      return
    }
    let inner = dims[n - 1]
    let innerA = sa[n - 1]
    let innerB = sb[n - 1]
    let outer = total / inner
    for i in 0..<n { counter[i] = 0 }
    var offA = 0
    var offB = 0
    var o = out
    for _ in 0..<outer {
      binaryContiguous(op, a + offA, innerA, b + offB, innerB, o, inner)
      o += inner
      // Odometer over the outer dims.
      var d = n - 2
      while d >= 0 {
        counter[d] += 1
        offA += sa[d]
        offB += sb[d]
        if counter[d] < dims[d] { break }
        offA -= sa[d] * dims[d]
        offB -= sb[d] * dims[d]
        counter[d] = 0
        d -= 1
      }
    }
  }
}

/// `out[i] = a[i * sa] <op> b[i * sb]` for `i < count`, with sa, sb in {0, 1} (0 = scalar operand).
@inline(__always)
func binaryContiguous(
  _ op: BinaryOp, _ a: UnsafePointer<Float>, _ sa: Int, _ b: UnsafePointer<Float>, _ sb: Int,
  _ out: UnsafeMutablePointer<Float>, _ count: Int
) {
  switch op {
  case .add:
    binaryLoop(a, sa, b, sb, out, count) {
      $0 + $1
    } scalar: {
      $0 + $1
    }
  case .sub:
    binaryLoop(a, sa, b, sb, out, count) {
      $0 - $1
    } scalar: {
      $0 - $1
    }
  case .mul:
    binaryLoop(a, sa, b, sb, out, count) {
      $0 * $1
    } scalar: {
      $0 * $1
    }
  case .div:
    binaryLoop(a, sa, b, sb, out, count) {
      $0 / $1
    } scalar: {
      $0 / $1
    }
  case .pow:
    if sb == 0 {
      // Constant exponents that exporters emit (x ** 2 in variance, x ** 0.5) get exact fast paths.
      switch b[0] {
      case 1:
        binaryLoop(a, sa, b, sb, out, count) { x, _ in
          x
        } scalar: { x, _ in
          x
        }
      case 2:
        binaryLoop(a, sa, b, sb, out, count) { x, _ in
          x * x
        } scalar: { x, _ in
          x * x
        }
      case 3:
        binaryLoop(a, sa, b, sb, out, count) { x, _ in
          x * x * x
        } scalar: { x, _ in
          x * x * x
        }
      case 0.5:
        binaryLoop(a, sa, b, sb, out, count) { x, _ in
          x.squareRoot()
        } scalar: { x, _ in
          x.squareRoot()
        }
      default:
        for i in 0..<count { out[i] = powf(a[i * sa], b[0]) }
      }
    } else {
      for i in 0..<count { out[i] = powf(a[i * sa], b[i * sb]) }
    }
  }
}

@inline(__always)
func binaryLoop(
  _ a: UnsafePointer<Float>, _ sa: Int, _ b: UnsafePointer<Float>, _ sb: Int,
  _ out: UnsafeMutablePointer<Float>, _ count: Int,
  vector: (Float8, Float8) -> Float8, scalar: (Float, Float) -> Float
) {
  let ra = UnsafeRawPointer(a)
  let rb = UnsafeRawPointer(b)
  let ro = UnsafeMutableRawPointer(out)
  var i = 0
  switch (sa, sb) {
  case (1, 1):
    while i + 8 <= count {
      let v = vector(
        ra.loadUnaligned(fromByteOffset: i * 4, as: Float8.self),
        rb.loadUnaligned(fromByteOffset: i * 4, as: Float8.self))
      ro.storeBytes(of: v, toByteOffset: i * 4, as: Float8.self)
      i += 8
    }
  case (1, 0):
    let vb = Float8(repeating: b[0])
    while i + 8 <= count {
      let v = vector(ra.loadUnaligned(fromByteOffset: i * 4, as: Float8.self), vb)
      ro.storeBytes(of: v, toByteOffset: i * 4, as: Float8.self)
      i += 8
    }
  case (0, 1):
    let va = Float8(repeating: a[0])
    while i + 8 <= count {
      let v = vector(va, rb.loadUnaligned(fromByteOffset: i * 4, as: Float8.self))
      ro.storeBytes(of: v, toByteOffset: i * 4, as: Float8.self)
      i += 8
    }
  default:
    break
  }
  while i < count {
    out[i] = scalar(a[i * sa], b[i * sb])
    i += 1
  }
}

/// `out[i] = op(input[i])` for `i < count`. `out` may equal `input` (in place).
public func unary(_ op: UnaryOp, _ input: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
  switch op {
  case .relu: unaryLoop(input, out, count) { VMath.relu($0) }
  case .gelu: unaryLoop(input, out, count) { VMath.gelu($0) }
  case .erf: unaryLoop(input, out, count) { VMath.erf($0) }
  case .sigmoid: unaryLoop(input, out, count) { VMath.sigmoid($0) }
  case .tanh: unaryLoop(input, out, count) { VMath.tanh($0) }
  case .sqrt: unaryLoop(input, out, count) { $0.squareRoot() }
  case .exp: unaryLoop(input, out, count) { VMath.exp($0) }
  case .neg: unaryLoop(input, out, count) { -$0 }
  case .abs: unaryLoop(input, out, count) { VMath.absolute($0) }
  case .reciprocal: unaryLoop(input, out, count) { 1 / $0 }
  }
}

@inline(__always)
func unaryLoop(
  _ input: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ count: Int, _ f: (Float8) -> Float8
) {
  let ri = UnsafeRawPointer(input)
  let ro = UnsafeMutableRawPointer(out)
  var i = 0
  while i + 8 <= count {
    ro.storeBytes(
      of: f(ri.loadUnaligned(fromByteOffset: i * 4, as: Float8.self)), toByteOffset: i * 4,
      as: Float8.self)
    i += 8
  }
  if i < count {
    // Tail through one padded vector so the tail gets exactly the same math as the body.
    var tail = Float8()
    for j in 0..<(count - i) { tail[j] = input[i + j] }
    tail = f(tail)
    for j in 0..<(count - i) { out[i + j] = tail[j] }
  }
}
