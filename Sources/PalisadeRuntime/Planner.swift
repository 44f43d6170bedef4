import PalisadeKernels

/// The type and concrete shape of a value in a specialised plan.
struct ValueType: Sendable {
  var type: ElementType
  var shape: [Int]
  var count: Int
  var bytes: Int { count * type.size }
}

/// Builds a kernel bound to operand locations: inputs (in node order; `.none` for omitted ones), outputs, and a
/// scratch region.
typealias KernelFactory = (_ ins: [Operand], _ outs: [Operand], _ scratch: Operand) -> Kernel

/// What planning made of one node.
enum Lowering {
  /// Outputs computed at plan time (Constant, Shape, ConstantOfShape).
  case constant([HostTensor])
  /// Output 0 is input `input` reinterpreted (Reshape, Flatten, Squeeze, ...), starting `byteOffset` bytes in.
  case view(outputs: [ValueType], input: Int, byteOffset: Int)
  /// A kernel; folded at plan time when all its inputs are constant.
  case compute(outputs: [ValueType], scratchBytes: Int, factory: KernelFactory)
}

/// A node that survived folding, as it will run.
struct LiveOp {
  var node: GraphNode
  var inputs: [Int?]
  var outputs: [Int?]
  var outTypes: [ValueType]
  var view: (input: Int, byteOffset: Int)?
  var scratchBytes: Int
  var factory: KernelFactory?
  var label: String
  var removed = false
}

/// Specialises a model for concrete input shapes: shape inference, constant folding, fusion, liveness-based
/// arena layout, and binding of every kernel to its buffers.
struct Planner {
  let model: ONNXModel
  let outputIdSet: Set<Int>
  let inputShapes: [[Int]]
  var types: [ValueType?]
  var consts: [HostTensor?]
  var live: [LiveOp] = []

  init(model: ONNXModel, inputShapes: [[Int]]) {
    self.model = model
    self.inputShapes = inputShapes
    outputIdSet = Set(model.outputIds)
    types = Array(repeating: nil, count: model.valueNames.count)
    consts = Array(repeating: nil, count: model.valueNames.count)
  }

  mutating func build() throws(RuntimeError) -> ExecutionPlan {
    let limits = model.limits
    for (v, t) in model.initializers {
      types[v] = ValueType(type: t.type, shape: t.shape, count: t.count)
      consts[v] = t
    }
    for (i, v) in model.inputIds.enumerated() {
      let shape = inputShapes[i]
      let count = try checkedCount(shape, limit: limits.maxTensorElements, what: "input '\(model.inputs[i].name)'")
      types[v] = ValueType(type: model.inputs[i].elementType, shape: shape, count: count)
    }
    let ctx = OpContext(opset: model.opsetVersion, limits: limits)
    for node in model.nodes {
      var inTypes: [ValueType?] = []
      var inConsts: [HostTensor?] = []
      for input in node.inputs {
        guard let v = input else {
          inTypes.append(nil)
          inConsts.append(nil)
          continue
        }
        guard let t = types[v] else {
          throw .graph("\(node.label) reads '\(model.valueNames[v].sanitizedForModelMessage)' before it is defined")
        }
        inTypes.append(t)
        inConsts.append(consts[v])
      }
      let lowering: Lowering
      do {
        lowering = try lower(node, inTypes, inConsts, ctx)
      } catch {
        throw RuntimeError(error.kind, "\(node.label): \(error.message)")
      }
      let allConst = zip(node.inputs, inConsts).allSatisfy { $0.0 == nil || $0.1 != nil }
      switch lowering {
      case .constant(let tensors):
        try bindConstants(node, tensors)
      case .view(let outs, let input, let offset):
        if allConst, let src = inConsts[input] {
          let t = HostTensor(type: outs[0].type, shape: outs[0].shape)
          t.storage.raw.copyMemory(from: src.storage.raw + offset, byteCount: outs[0].bytes)
          try bindConstants(node, [t])
        } else {
          try bindTypes(node, outs)
          live.append(
            LiveOp(
              node: node, inputs: node.inputs, outputs: node.outputs, outTypes: outs, view: (input, offset),
              scratchBytes: 0, factory: nil, label: node.label))
        }
      case .compute(let outs, let scratch, let factory):
        if allConst {
          try bindConstants(node, try fold(outs, scratch, factory, inConsts))
        } else {
          try bindTypes(node, outs)
          live.append(
            LiveOp(
              node: node, inputs: node.inputs, outputs: node.outputs, outTypes: outs, view: nil,
              scratchBytes: scratch, factory: factory, label: node.label))
        }
      }
    }
    try fuse(ctx)
    live = live.filter { !$0.removed }
    return try compile()
  }

  private mutating func bindTypes(_ node: GraphNode, _ outs: [ValueType]) throws(RuntimeError) {
    for (i, output) in node.outputs.enumerated() {
      guard let v = output else { continue }
      guard i < outs.count else { throw .graph("\(node.label): output \(i) is not produced by this operator") }
      types[v] = outs[i]
    }
  }

  private mutating func bindConstants(_ node: GraphNode, _ tensors: [HostTensor]) throws(RuntimeError) {
    for (i, output) in node.outputs.enumerated() {
      guard let v = output else { continue }
      guard i < tensors.count else { throw .graph("\(node.label): output \(i) is not produced by this operator") }
      let t = tensors[i]
      types[v] = ValueType(type: t.type, shape: t.shape, count: t.count)
      consts[v] = t
    }
  }

  /// Runs a kernel whose inputs are all constants, at plan time.
  private func fold(
    _ outs: [ValueType], _ scratch: Int, _ factory: KernelFactory, _ inConsts: [HostTensor?]
  ) throws(RuntimeError) -> [HostTensor] {
    let outputs = outs.map { HostTensor(type: $0.type, shape: $0.shape) }
    let scratchStorage = TensorStorage(byteCount: scratch)
    let kernel = factory(
      inConsts.map { $0.map { Operand.constant($0.storage.raw) } ?? .none },
      outputs.map { .constant($0.storage.raw) }, .constant(scratchStorage.raw))
    try kernel(scratchStorage.raw, nil)
    return outputs
  }

  /// Arena layout and kernel binding.
  private func compile() throws(RuntimeError) -> ExecutionPlan {
    let valueCount = types.count
    // Storage roots: a view shares its input's storage.
    var root = Array(0..<valueCount)
    var rootOffset = [Int](repeating: 0, count: valueCount)
    var first = [Int](repeating: Int.max, count: valueCount)
    var last = [Int](repeating: Int.min, count: valueCount)
    for v in model.inputIds {
      first[v] = -1
      last[v] = max(last[v], -1)
    }
    for (t, op) in live.enumerated() {
      for case let v? in op.inputs where consts[v] == nil {
        last[root[v]] = max(last[root[v]], t)
      }
      if let view = op.view, let input = op.inputs[view.input], let out = op.outputs[0] {
        root[out] = root[input]
        rootOffset[out] = rootOffset[input] + view.byteOffset
        last[root[out]] = max(last[root[out]], t)
      } else {
        for case let v? in op.outputs {
          first[v] = min(first[v], t)
          last[v] = max(last[v], t)
        }
      }
    }
    let end = live.count
    for v in model.outputIds where consts[v] == nil { last[root[v]] = end }

    // Allocation requests: root values and per-step scratch.
    struct Request {
      var size: Int
      var start: Int
      var stop: Int
      var offset = 0
    }
    var requests: [Request] = []
    var requestOfValue = [Int](repeating: -1, count: valueCount)
    for v in 0..<valueCount where root[v] == v && first[v] != Int.max && consts[v] == nil {
      guard let t = types[v] else { continue }
      requestOfValue[v] = requests.count
      requests.append(Request(size: align(t.bytes), start: first[v], stop: max(last[v], first[v])))
    }
    var scratchRequest = [Int](repeating: -1, count: live.count)
    for (t, op) in live.enumerated() where op.scratchBytes > 0 {
      scratchRequest[t] = requests.count
      requests.append(Request(size: align(op.scratchBytes), start: t, stop: t))
    }
    // Greedy by size: each buffer goes at the lowest offset free during its whole lifetime.
    let order = requests.indices.sorted { requests[$0].size > requests[$1].size }
    var placed: [Int] = []
    var arenaBytes = 0
    for r in order {
      let req = requests[r]
      let conflicts = placed.filter { requests[$0].start <= req.stop && req.start <= requests[$0].stop }
        .map { (requests[$0].offset, requests[$0].offset + requests[$0].size) }.sorted { $0.0 < $1.0 }
      var offset = 0
      for (lo, hi) in conflicts {
        if offset + req.size <= lo { break }
        offset = max(offset, hi)
      }
      requests[r].offset = offset
      placed.append(r)
      let (top, o) = offset.addingReportingOverflow(req.size)
      guard !o, top <= model.limits.maxArenaBytes else {
        throw .limit("activations need more than \(model.limits.maxArenaBytes) bytes")
      }
      arenaBytes = max(arenaBytes, top)
    }

    var keepAlive: [TensorStorage] = []
    func operand(_ v: Int?) -> Operand {
      guard let v else { return .none }
      if let c = consts[v] {
        keepAlive.append(c.storage)
        return .constant(c.storage.raw)
      }
      let r = root[v]
      return .arena(requests[requestOfValue[r]].offset + rootOffset[v])
    }
    var steps: [Step] = []
    for (t, op) in live.enumerated() {
      guard let factory = op.factory else { continue }  // views cost nothing
      let ins = op.inputs.map { operand($0) }
      let outs = op.outputs.map { operand($0) }
      let scratch = scratchRequest[t] >= 0 ? Operand.arena(requests[scratchRequest[t]].offset) : .none
      steps.append(Step(label: op.label, run: factory(ins, outs, scratch)))
    }
    var outputs: [(name: String, type: ElementType, source: ExecutionPlan.OutputSource)] = []
    var outputShapes: [[Int]] = []
    for (i, v) in model.outputIds.enumerated() {
      guard let t = types[v] else { throw .graph("output '\(model.outputs[i].name)' has no type") }
      guard t.type == model.outputs[i].elementType else {
        throw .shape("output '\(model.outputs[i].name.sanitizedForModelMessage)' is \(t.type), declared \(model.outputs[i].elementType)")
      }
      let declared = model.outputs[i].dims
      if declared.count == t.shape.count {
        for (d, n) in zip(declared, t.shape) {
          if case .fixed(let f) = d, f != n {
            throw .shape("output '\(model.outputs[i].name.sanitizedForModelMessage)' has shape \(t.shape), declared \(declared)")
          }
        }
      } else if model.outputs[i].shapeDeclared {
        throw .shape("output '\(model.outputs[i].name.sanitizedForModelMessage)' has rank \(t.shape.count), declared \(declared.count)")
      }
      outputShapes.append(t.shape)
      if let c = consts[v] {
        outputs.append((model.outputs[i].name, t.type, .constant(c)))
      } else {
        let o = operand(v)
        outputs.append((model.outputs[i].name, t.type, .arena(offset: o.offset)))
      }
    }
    let inputOffsets = model.inputIds.map { operand($0).offset }
    return ExecutionPlan(
      inputShapes: inputShapes, outputShapes: outputShapes, arenaBytes: arenaBytes, steps: steps,
      inputOffsets: inputOffsets, inputTypes: model.inputs.map(\.elementType), outputs: outputs,
      keepAlive: keepAlive)
  }

  private func align(_ n: Int) -> Int { max(64, (n + 63) & ~63) }
}
