import PalisadeKernels

/// Fusion over the live (unfolded) ops of a specialised plan:
/// - MatMul with a constant 2-D weight, or Gemm with constant B and a per-column C, becomes one dense GEMM;
///   a following Add of a constant per-column bias and an activation (Relu, Sigmoid, Tanh, Gelu, or the
///   `x * 0.5 * (1 + erf(x / sqrt 2))` subgraph exporters emit for GELU) go into the GEMM's epilogue.
/// - Conv followed by an activation runs the activation in the convolution's GEMM epilogue.
extension Planner {
  mutating func fuse(_ ctx: OpContext) throws(RuntimeError) {
    for i in live.indices where !live[i].removed {
      switch live[i].node.opType {
      case "MatMul", "Gemm": try fuseDense(i, ctx)
      case "Conv": try fuseConvActivation(i, ctx)
      default: break
      }
    }
  }

  /// Live ops reading value `v`.
  func consumers(_ v: Int) -> [Int] {
    var out: [Int] = []
    for (j, op) in live.enumerated() where !op.removed && op.inputs.contains(where: { $0 == v }) { out.append(j) }
    return out
  }

  func constScalar(_ v: Int?) -> Float? {
    guard let v, let c = consts[v], c.type == .float32, c.count == 1 else { return nil }
    return c.floatPointer[0]
  }

  /// The other input of a binary op `j` whose one input is `v`.
  func otherInput(_ j: Int, _ v: Int) -> Int? {
    let ins = live[j].inputs
    guard ins.count == 2 else { return nil }
    if ins[0] == v { return ins[1] }
    if ins[1] == v { return ins[0] }
    return nil
  }

  /// Single live consumer of `v`, if `v` is not a graph output.
  func soleConsumer(_ v: Int) -> Int? {
    guard !outputIdSet.contains(v) else { return nil }
    let c = consumers(v)
    return c.count == 1 ? c[0] : nil
  }

  mutating func addConstant(_ t: HostTensor) -> Int {
    types.append(ValueType(type: t.type, shape: t.shape, count: t.count))
    consts.append(t)
    return types.count - 1
  }

  /// Recognises the exported GELU subgraph starting at `x`; returns the ops to remove and the final value.
  func geluPattern(_ x: Int) -> (ops: [Int], output: Int)? {
    guard !outputIdSet.contains(x) else { return nil }
    let c = consumers(x)
    guard c.count == 2 else { return nil }
    for (first, second) in [(c[0], c[1]), (c[1], c[0])] {
      let scaleOp = live[first]
      guard let scaleOut = scaleOp.outputs.first ?? nil, let s = constScalar(otherInput(first, x)) else { continue }
      let isDiv = scaleOp.node.opType == "Div" && scaleOp.inputs[0] == x && abs(s - 1.41421356) < 1e-4
      let isMul = scaleOp.node.opType == "Mul" && abs(s - 0.70710678) < 1e-4
      guard isDiv || isMul else { continue }
      guard let erf = soleConsumer(scaleOut), live[erf].node.opType == "Erf",
        let erfOut = live[erf].outputs.first ?? nil,
        let add = soleConsumer(erfOut), live[add].node.opType == "Add", constScalar(otherInput(add, erfOut)) == 1,
        let addOut = live[add].outputs.first ?? nil,
        let mul = soleConsumer(addOut), mul == second, live[mul].node.opType == "Mul", otherInput(mul, addOut) == x,
        let mulOut = live[mul].outputs.first ?? nil,
        let half = soleConsumer(mulOut), live[half].node.opType == "Mul", constScalar(otherInput(half, mulOut)) == 0.5,
        let out = live[half].outputs.first ?? nil
      else { continue }
      return ([first, erf, add, mul, half], out)
    }
    return nil
  }

  mutating func fuseDense(_ i: Int, _ ctx: OpContext) throws(RuntimeError) {
    let op = live[i]
    guard op.inputs.count >= 2, let a = op.inputs[0], let b = op.inputs[1], let at = types[a], at.type == .float32,
      at.shape.count >= 1, let w = consts[b], w.type == .float32, w.shape.count == 2,
      let out = op.outputs.first ?? nil
    else { return }
    var weight: HostTensor
    var bias: [Float]? = nil
    let n: Int
    if op.node.opType == "MatMul" {
      guard at.shape.count >= 2 else { return }
      weight = w
      n = w.shape[1]
    } else {
      guard try op.node.int("transA", 0) == 0, at.shape.count == 2 else { return }
      let transB = try op.node.int("transB", 0) != 0
      let alpha = try op.node.float("alpha", 1)
      let beta = try op.node.float("beta", 1)
      let (k, nn) = transB ? (w.shape[1], w.shape[0]) : (w.shape[0], w.shape[1])
      n = nn
      if op.inputs.count > 2, let cId = op.inputs[2] {
        guard let c = consts[cId], c.type == .float32, c.count == n || c.count == 1,
          c.shape.count <= 2, c.shape.count < 2 || c.shape[0] == 1
        else { return }
        let values = c.floatValues
        bias = (0..<n).map { beta * values[c.count == 1 ? 0 : $0] }
      }
      if transB || alpha != 1 {
        weight = HostTensor(type: .float32, shape: [k, n])
        let (src, dst) = (w.floatPointer, weight.floatPointer)
        for r in 0..<k {
          for col in 0..<n { dst[r * n + col] = alpha * (transB ? src[col * k + r] : src[r * n + col]) }
        }
      } else {
        weight = w
      }
    }
    var cur = out
    var activationName = ""
    var removed: [Int] = []
    // Bias adds.
    while let j = soleConsumer(cur), live[j].node.opType == "Add", let other = otherInput(j, cur),
      let c = consts[other], c.type == .float32, c.count == n, c.shape.last == n,
      c.shape.count <= (types[cur]?.shape.count ?? 0), let next = live[j].outputs.first ?? nil,
      types[next]?.shape == types[cur]?.shape
    {
      let values = c.floatValues
      bias = (0..<n).map { (bias?[$0] ?? 0) + values[$0] }
      removed.append(j)
      cur = next
    }
    // Activation.
    if let j = soleConsumer(cur), ["Relu", "Sigmoid", "Tanh", "Gelu"].contains(live[j].node.opType),
      try live[j].node.string("approximate", "none") == "none", let next = live[j].outputs.first ?? nil
    {
      activationName = live[j].node.opType
      removed.append(j)
      cur = next
    } else if let (ops, next) = geluPattern(cur) {
      activationName = "Gelu"
      removed += ops
      cur = next
    }
    var inputs: [Int?] = [a, addConstant(weight)]
    if let bias { inputs.append(addConstant(.floats(bias, shape: [n]))) }
    var node = GraphNode(
      name: op.node.name, opType: "_Dense", domain: "", inputs: inputs, outputs: [cur],
      attributes: ["_activation": .string(activationName)])
    node.name = op.node.name
    let lowering = try lower(
      node, inputs.map { $0.flatMap { types[$0] } }, inputs.map { $0.flatMap { consts[$0] } }, ctx)
    guard case .compute(let outs, let scratch, let factory) = lowering, types[cur]?.shape == outs[0].shape else {
      return
    }
    for j in removed { live[j].removed = true }
    var label = "Dense(\(op.label)"
    if bias != nil { label += "+bias" }
    if !activationName.isEmpty { label += "+\(activationName)" }
    live[i] = LiveOp(
      node: node, inputs: inputs, outputs: [cur], outTypes: outs, view: nil, scratchBytes: scratch, factory: factory,
      label: label + ")")
  }

  mutating func fuseConvActivation(_ i: Int, _ ctx: OpContext) throws(RuntimeError) {
    let op = live[i]
    guard let out = op.outputs.first ?? nil, let j = soleConsumer(out),
      ["Relu", "Sigmoid", "Tanh"].contains(live[j].node.opType), let next = live[j].outputs.first ?? nil
    else { return }
    var node = op.node
    node.attributes["_activation"] = .string(live[j].node.opType)
    node.outputs = [next]
    var removed = [j]
    var final = next
    var label = "\(op.label)+\(live[j].node.opType)"
    // A BatchNormalization after the activation (exporters cannot fold it into the weights there) becomes a
    // per-channel multiply-add on the convolution's output registers: no separate pass over the tensor.
    if let k = soleConsumer(next), live[k].inputs.first == next, let (mul, add) = try inferenceBatchNorm(k),
      let bnOut = live[k].outputs.first ?? nil,
      let channels = types[next]?.shape.dropFirst().first, mul.count == channels
    {
      node.attributes["_post_mul"] = .floats(mul)
      node.attributes["_post_add"] = .floats(add)
      node.outputs = [bnOut]
      removed.append(k)
      final = bnOut
      label += "+BatchNormalization"
    }
    let lowering = try lower(
      node, op.inputs.map { $0.flatMap { types[$0] } }, op.inputs.map { $0.flatMap { consts[$0] } }, ctx)
    guard case .compute(let outs, let scratch, let factory) = lowering, types[final]?.shape == outs[0].shape else {
      return
    }
    for r in removed { live[r].removed = true }
    live[i] = LiveOp(
      node: node, inputs: op.inputs, outputs: [final], outTypes: outs, view: nil, scratchBytes: scratch,
      factory: factory, label: label)
  }

  /// The per-channel `x * mul + add` of live op `k` if it is an inference-mode BatchNormalization with constant
  /// parameters over its input's channels (the same factors its own lowering computes).
  func inferenceBatchNorm(_ k: Int) throws(RuntimeError) -> ([Float], [Float])? {
    let bn = live[k]
    guard bn.node.opType == "BatchNormalization", try bn.node.int("training_mode", 0) == 0, bn.inputs.count == 5,
      bn.node.outputs.dropFirst().allSatisfy({ $0 == nil })
    else { return nil }
    var params: [[Float]] = []
    for v in bn.inputs.dropFirst() {
      guard let v, let t = consts[v], t.type == .float32 else { return nil }
      params.append(t.floatValues)
    }
    let c = params[0].count
    guard params.allSatisfy({ $0.count == c }) else { return nil }
    let eps = try bn.node.float("epsilon", 1e-5)
    var mul = [Float](repeating: 0, count: c)
    var add = [Float](repeating: 0, count: c)
    for i in 0..<c {
      mul[i] = params[0][i] / (params[3][i] + eps).squareRoot()
      add[i] = params[1][i] - params[2][i] * mul[i]
    }
    return (mul, add)
  }
}
