import PalisadeKernels
import Synchronization

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
/// arena layout, and binding of every kernel to its buffers (runs of per-image ops bound chunk by chunk as one
/// step: ``ImageGroup``).
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
    return try compile(ctx)
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
  private func compile(_ ctx: OpContext) throws(RuntimeError) -> ExecutionPlan {
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
    // Image groups run image by image through all their ops, so every value they touch must stay in place (no
    // buffer sharing) for the whole group.
    let groups = imageGroups(ctx)
    var groupAt = [Int](repeating: -1, count: live.count)
    for (g, group) in groups.enumerated() {
      for t in group.ops {
        groupAt[t] = g
        for case let v? in live[t].inputs + live[t].outputs where consts[v] == nil {
          first[root[v]] = min(first[root[v]], group.ops.lowerBound)
          last[root[v]] = max(last[root[v]], group.ops.upperBound - 1)
        }
      }
    }

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
    for (t, op) in live.enumerated() where op.scratchBytes > 0 && groupAt[t] < 0 {
      scratchRequest[t] = requests.count
      requests.append(Request(size: align(op.scratchBytes), start: t, stop: t))
    }
    // A group's scratch: a chunk counter and one error cell per slot, then one region per slot (a thread running
    // its ops one after another). In the arena, so an inference allocates nothing for them.
    var groupRequest: [Int] = []
    for group in groups {
      groupRequest.append(requests.count)
      let (bytes, o) = group.slotBytes.multipliedReportingOverflow(by: group.slots)
      guard !o, bytes < model.limits.maxArenaBytes else {
        throw .limit("activations need more than \(model.limits.maxArenaBytes) bytes")
      }
      requests.append(
        Request(size: align(groupHeaderBytes + bytes), start: group.ops.lowerBound, stop: group.ops.upperBound - 1))
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
      if groupAt[t] >= 0 {
        let g = groupAt[t]
        if t == groups[g].ops.lowerBound {
          steps.append(bindGroup(groups[g], scratch: requests[groupRequest[g]].offset, operand: operand))
        }
        continue
      }
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
        throw .shape(
          "output '\(model.outputs[i].name.sanitizedForModelMessage)' is \(t.type), declared \(model.outputs[i].elementType)"
        )
      }
      let declared = model.outputs[i].dims
      if declared.count == t.shape.count {
        for (d, n) in zip(declared, t.shape) {
          if case .fixed(let f) = d, f != n {
            throw .shape(
              "output '\(model.outputs[i].name.sanitizedForModelMessage)' has shape \(t.shape), declared \(declared)")
          }
        }
      } else if model.outputs[i].shapeDeclared {
        throw .shape(
          "output '\(model.outputs[i].name.sanitizedForModelMessage)' has rank \(t.shape.count), declared \(declared.count)"
        )
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

// MARK: - Image groups

/// Consecutive batch-separable ops (convolutions, pools, batch normalisation, Relu) over the same batch, compiled
/// into one step that runs chunks of images through all of them, one chunk per thread at a time. A small CNN's
/// steps are each too short to split well over the pool (one synchronisation per step, helper threads woken for
/// each); per chunk, the activations between the ops also stay in the core's caches.
struct ImageGroup {
  /// Indices into `live`.
  var ops: Range<Int>
  var batch: Int
  var chunks: Int
  /// Images per chunk: the first `extra` chunks take one more.
  var small: Int
  var extra: Int
  /// Scratch regions (one per thread that may run chunks concurrently) and the bytes of each.
  var slots: Int
  var slotBytes: Int
  /// Per op: the kernel factory for chunks of `small` images, and of `small + 1` when `extra > 0`.
  var factories: [[KernelFactory]]
}

/// Bytes before a group's slot regions: the chunk counter (64, its own cache line), then up to 16 error cells.
private let groupHeaderBytes = (64 + 16 * MemoryLayout<RuntimeError?>.stride + 63) & ~63

/// Kernels of one group, `[slot][chunk][op]`, kept alive by the group's step.
private final class GroupKernels {
  let kernels: UnsafeMutablePointer<Kernel>
  let count: Int

  init(_ list: [Kernel]) {
    count = list.count
    kernels = .allocate(capacity: max(list.count, 1))
    kernels.initialize(from: list, count: list.count)
  }

  deinit {
    kernels.deinitialize(count: count)
    kernels.deallocate()
  }
}

/// One group's run on the pool: each part takes chunks from a shared counter and runs all ops on them with its
/// own scratch (slot = part).
private struct GroupJob {
  var kernels: UnsafeMutablePointer<Kernel>
  var base: UnsafeMutableRawPointer
  var counter: UnsafeMutablePointer<Atomic<Int>>
  var errors: UnsafeMutablePointer<RuntimeError?>
  var chunks: Int
  var ops: Int

  func run(part: Int) {
    while true {
      let c = counter.pointee.wrappingAdd(1, ordering: .relaxed).oldValue
      if c >= chunks { return }
      let row = kernels + (part * chunks + c) * ops
      for k in 0..<ops {
        do throws(RuntimeError) { try row[k](base, nil) } catch { if errors[part] == nil { errors[part] = error } }
      }
    }
  }
}

extension Planner {
  /// Maximal runs (two ops or more) of consecutive image-separable ops over one batch of at least 2.
  func imageGroups(_ ctx: OpContext) -> [ImageGroup] {
    func batchOf(_ t: Int) -> Int? {
      let op = live[t]
      guard op.factory != nil, op.view == nil, OperatorRegistry.isImageSeparable(op.node),
        let x = op.inputs.first ?? nil, consts[x] == nil, let xt = types[x], xt.shape.count >= 2, xt.shape[0] >= 2,
        op.inputs.dropFirst().allSatisfy({ $0.map { consts[$0] != nil } ?? true }),
        let y = op.outputs.first ?? nil, op.outputs.dropFirst().allSatisfy({ $0 == nil }), consts[y] == nil,
        let yt = types[y], yt.shape.count >= 1, yt.shape[0] == xt.shape[0]
      else { return nil }
      return xt.shape[0]
    }
    var groups: [ImageGroup] = []
    var t = 0
    while t < live.count {
      guard let n = batchOf(t) else {
        t += 1
        continue
      }
      var u = t + 1
      while u < live.count, batchOf(u) == n { u += 1 }
      if u - t >= 2, let group = imageGroup(t..<u, batch: n, ctx) { groups.append(group) }
      t = u
    }
    return groups
  }

  /// Lowers each op of `ops` again for chunk-sized batches; nil (no group) if any does not lower the same way.
  private func imageGroup(_ ops: Range<Int>, batch n: Int, _ ctx: OpContext) -> ImageGroup? {
    // Chunks of several images (each kernel call has a fixed cost: at batch 32 on 2 cores, 8 chunks ran the CNN
    // fixture in 423 µs of CPU, 32 chunks in 437), but at least two per thread so a slow thread can be evened out.
    let cores = WorkerPool.availableCores()
    let chunks = min(n, min(64, max(8, 2 * (cores + 1))))
    let (small, extra) = (n / chunks, n % chunks)
    var factories: [[KernelFactory]] = []
    var slotBytes = 0
    for t in ops {
      let op = live[t]
      guard let y = op.outputs.first ?? nil, let full = types[y] else { return nil }
      var pair: [KernelFactory] = []
      for size in extra > 0 ? [small, small + 1] : [small] {
        let inTypes = op.inputs.enumerated().map { i, v -> ValueType? in
          guard let v, var vt = types[v] else { return nil }
          if i == 0 {
            vt.shape[0] = size
            vt.count = vt.count / n * size
          }
          return vt
        }
        let inConsts = op.inputs.map { $0.flatMap { consts[$0] } }
        guard let lowering = try? lower(op.node, inTypes, inConsts, ctx),
          case .compute(let outs, let scratch, let factory) = lowering, outs.count >= 1, outs[0].type == full.type,
          outs[0].shape == [size] + full.shape.dropFirst()
        else { return nil }
        slotBytes = max(slotBytes, align(scratch))
        pair.append(factory)
      }
      factories.append(pair)
    }
    let slots = min(chunks, min(cores + 1, 16))
    return ImageGroup(
      ops: ops, batch: n, chunks: chunks, small: small, extra: extra, slots: slots, slotBytes: slotBytes,
      factories: factories)
  }

  /// Binds every (slot, chunk, op) kernel of a group and returns its step. `scratch` is the group's region.
  func bindGroup(_ g: ImageGroup, scratch: Int, operand: (Int?) -> Operand) -> Step {
    let opCount = g.ops.count
    var list: [Kernel] = []
    list.reserveCapacity(g.slots * g.chunks * opCount)
    for slot in 0..<g.slots {
      let slotScratch = Operand.arena(scratch + groupHeaderBytes + slot * g.slotBytes)
      var start = 0
      for c in 0..<g.chunks {
        let size = g.small + (c < g.extra ? 1 : 0)
        for (k, t) in g.ops.enumerated() {
          let op = live[t]
          // Image `start` of a batched operand: every tensor here is contiguous with the batch leading.
          func shifted(_ v: Int?) -> Operand {
            var o = operand(v)
            if let v, consts[v] == nil, let vt = types[v] { o.offset += start * (vt.bytes / g.batch) }
            return o
          }
          let ins = op.inputs.enumerated().map { i, v in i == 0 ? shifted(v) : operand(v) }
          let outs = op.outputs.enumerated().map { i, v in i == 0 ? shifted(v) : operand(v) }
          let factory = g.factories[k][size == g.small ? 0 : 1]
          list.append(factory(ins, outs, slotScratch))
        }
        start += size
      }
    }
    let table = GroupKernels(list)
    let (chunks, slots) = (g.chunks, g.slots)
    let label = "Images(" + g.ops.map { live[$0].label }.joined(separator: "; ") + ")"
    let run: Kernel = { (base: UnsafeMutableRawPointer, pool: WorkerPool?) throws(RuntimeError) in
      guard let pool, pool.threadCount > 1, slots > 1 else {
        for i in 0..<(chunks * opCount) { try table.kernels[i](base, nil) }  // slot 0, chunk by chunk
        return
      }
      let counter = (base + scratch).bindMemory(to: Atomic<Int>.self, capacity: 1)
      counter.initialize(to: Atomic(0))
      defer { counter.deinitialize(count: 1) }
      let parts = min(slots, pool.threadCount + 1)
      let errors = (base + scratch + 64).bindMemory(to: RuntimeError?.self, capacity: parts)
      errors.initialize(repeating: nil, count: parts)
      defer { errors.deinitialize(count: parts) }
      var job = GroupJob(
        kernels: table.kernels, base: base, counter: counter, errors: errors, chunks: chunks, ops: opCount)
      withUnsafePointer(to: &job) { p in
        pool.parallelFor(parts, context: UnsafeRawPointer(p)) { context, part in
          context.assumingMemoryBound(to: GroupJob.self).pointee.run(part: part)
        }
      }
      for i in 0..<parts { if let error = errors[i] { throw error } }
    }
    return Step(label: label, run: run)
  }
}
