import Testing
import PalisadeKernels

/// Naive numpy-broadcast reference: index every output element, map back to each operand.
func broadcastReference(
  _ op: BinaryOp, _ a: [Float], _ aShape: [Int], _ b: [Float], _ bShape: [Int], _ outShape: [Int]
) -> [Double] {
  let total = outShape.reduce(1, *)
  var out = [Double](repeating: 0, count: total)
  for flat in 0..<total {
    var rem = flat
    var index = [Int](repeating: 0, count: outShape.count)
    for d in stride(from: outShape.count - 1, through: 0, by: -1) {
      index[d] = rem % outShape[d]
      rem /= outShape[d]
    }
    func offset(_ shape: [Int]) -> Int {
      var o = 0
      for (d, dim) in shape.enumerated() {
        let i = index[outShape.count - shape.count + d]
        o = o * dim + (dim == 1 ? 0 : i)
      }
      return o
    }
    let x = Double(a[offset(aShape)])
    let y = Double(b[offset(bShape)])
    switch op {
    case .add: out[flat] = x + y
    case .sub: out[flat] = x - y
    case .mul: out[flat] = x * y
    case .div: out[flat] = x / y
    case .pow: out[flat] = powRef(x, y)
    }
  }
  return out
}

let broadcastCases: [([Int], [Int])] = [
  ([2, 3, 4], [2, 3, 4]), ([2, 3, 4], [4]), ([2, 3, 4], [3, 1]), ([2, 1, 4], [1, 3, 1]), ([], [5]),
  ([1], [2, 3]), ([7, 13], [13]), ([7, 13], [7, 1]), ([1, 13], [31, 1]), ([2, 1, 3, 1, 5], [4, 1, 6, 5]),
  ([3, 17], []), ([4, 0, 3], [3]), ([9], [9]), ([2, 2, 2, 2, 2, 2, 2], [2, 1, 2]),
]

@Suite("Element-wise")
struct ElementWiseTests {
  @Test("broadcast binary ops", arguments: [BinaryOp.add, .sub, .mul, .div, .pow])
  func broadcasting(op: BinaryOp) throws {
    for (aShape, bShape) in broadcastCases {
      let outShape = try broadcastShape(aShape, bShape)
      let a = randomFloats(aShape.reduce(1, *), seed: 1, in: op == .pow ? 0.1...3 : -2...2)
      var b = randomFloats(bShape.reduce(1, *), seed: 2, in: op == .pow ? -2...2 : 0.5...2)
      if op == .sub { b = b.map { -$0 } }
      var out = [Float](repeating: .nan, count: outShape.reduce(1, *))
      try binary(op, a, shape: aShape, b, shape: bShape, out: &out, shape: outShape)
      let expected = broadcastReference(op, a, aShape, b, bShape, outShape)
      #expect(firstMismatch(out, expected) == nil, "\(op) \(aShape) \(bShape)")
      // And the swapped operand order.
      let outShape2 = try broadcastShape(bShape, aShape)
      #expect(outShape2 == outShape)
      var out2 = [Float](repeating: .nan, count: out.count)
      try binary(op, b, shape: bShape, a, shape: aShape, out: &out2, shape: outShape)
      let expected2 = broadcastReference(op, b, bShape, a, aShape, outShape)
      #expect(firstMismatch(out2, expected2) == nil, "\(op) \(bShape) \(aShape)")
    }
  }

  @Test("pow fast paths for scalar exponents", arguments: [Float(1), 2, 3, 0.5, 1.7, -1])
  func powScalar(exponent: Float) throws {
    let a = randomFloats(37, seed: 4, in: 0...4)
    var out = [Float](repeating: 0, count: 37)
    try binary(.pow, a, shape: [37], [exponent], shape: [1], out: &out, shape: [37])
    let expected = a.map { powRef(Double($0), Double(exponent)) }
    #expect(firstMismatch(out, expected) == nil)
  }

  @Test("in-place output")
  func inPlace() throws {
    var a = randomFloats(24, seed: 8)
    let original = a
    let b: [Float] = [1, 2, 3, 4]
    try a.withUnsafeMutableBufferPointer { p in
      try binary(.mul, p.baseAddress!, shape: [6, 4], b, shape: [4], out: p.baseAddress!, shape: [6, 4])
    }
    for i in 0..<24 { #expect(a[i] == original[i] * b[i % 4]) }
  }

  @Test("shape errors are thrown")
  func shapeErrors() {
    #expect(throws: KernelError.self) { try broadcastShape([2, 3], [4]) }
    #expect(throws: KernelError.self) { try broadcastShape([-1], [1]) }
    var out = [Float](repeating: 0, count: 6)
    #expect(throws: KernelError.self) {
      try binary(.add, [Float](repeating: 1, count: 6), shape: [2, 3], [1, 2], shape: [2], out: &out, shape: [2, 3])
    }
    #expect(throws: KernelError.self) {
      try binary(.add, [Float(1)], shape: [1], [Float(2)], shape: [1], out: &out, shape: [3])
    }
    #expect(throws: KernelError.self) { try elementCount([Int.max / 2, 3]) }
  }

  @Test(
    "unary ops against libm",
    arguments: [UnaryOp.relu, .gelu, .erf, .sigmoid, .tanh, .sqrt, .exp, .neg, .abs, .reciprocal])
  func unaryOps(op: UnaryOp) {
    var input: [Float] = stride(from: -12, through: 12, by: 0.037).map { Float($0) }
    input += [0, -0.0, 1e-8, -1e-8, 1e-3, -1e-3, 0.6249, 0.6251, -0.6251, 50, -50, 89, -89, 100, -100, 3.99, 4.01]
    if op == .sqrt { input = input.map { Swift.abs($0) } }
    if op == .reciprocal { input = input.filter { $0 != 0 } }
    for count in [input.count, 1, 7, 8, 9] {
      let x = Array(input.prefix(count))
      var out = [Float](repeating: .nan, count: count)
      unary(op, x, out: &out, count: count)
      let expected: [Double] = x.map { f in
        let v = Double(f)
        switch op {
        case .relu: return max(v, 0)
        case .gelu: return 0.5 * v * (1 + erfRef(v / 2.0.squareRoot()))
        case .erf: return erfRef(v)
        case .sigmoid: return 1 / (1 + expRef(-v))
        case .tanh: return tanhRef(v)
        case .sqrt: return v.squareRoot()
        case .exp: return Double(Float(expRef(v)))  // overflow to inf at float range
        case .neg: return -v
        case .abs: return Swift.abs(v)
        case .reciprocal: return 1 / v
        }
      }
      let bad = firstMismatch(out, expected, rel: 1e-5, abs: 1e-6)
      #expect(
        bad == nil,
        "\(op): x=\(bad.map { x[$0] } ?? 0) got \(bad.map { out[$0] } ?? 0) want \(bad.map { expected[$0] } ?? 0)")
    }
    // In place.
    var buffer = input
    buffer.withUnsafeMutableBufferPointer { p in unary(op, p.baseAddress!, out: p.baseAddress!, count: p.count) }
    var separate = [Float](repeating: 0, count: input.count)
    unary(op, input, out: &separate, count: input.count)
    #expect(
      buffer == separate || op == .sqrt || op == .reciprocal
        || buffer.elementsEqual(separate) { $0 == $1 || ($0.isNaN && $1.isNaN) })
  }

  @Test("NaN propagates through activations", arguments: [UnaryOp.relu, .gelu, .erf, .sigmoid, .tanh, .exp])
  func nanPropagates(op: UnaryOp) {
    var out = [Float](repeating: 0, count: 9)
    unary(op, [Float](repeating: .nan, count: 9), out: &out, count: 9)
    #expect(out.allSatisfy { $0.isNaN }, "\(op)")
  }
}
