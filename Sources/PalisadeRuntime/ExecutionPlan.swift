import Dispatch
public import PalisadeCore
public import PalisadeKernels
import Synchronization

/// Where a kernel finds one tensor: a fixed address (a constant) or an offset into the per-inference arena.
struct Operand: @unchecked Sendable {
  var fixed: UnsafeMutableRawPointer?
  var offset: Int

  static func arena(_ offset: Int) -> Operand { Operand(fixed: nil, offset: offset) }
  static func constant(_ p: UnsafeMutableRawPointer) -> Operand { Operand(fixed: p, offset: 0) }
  static let none = Operand(fixed: nil, offset: 0)

  @inline(__always) func raw(_ base: UnsafeMutableRawPointer) -> UnsafeMutableRawPointer { (fixed ?? base) + offset }
  @inline(__always) func f(_ base: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Float> {
    raw(base).assumingMemoryBound(to: Float.self)
  }
  @inline(__always) func i64(_ base: UnsafeMutableRawPointer) -> UnsafeMutablePointer<Int64> {
    raw(base).assumingMemoryBound(to: Int64.self)
  }
  @inline(__always) func u8(_ base: UnsafeMutableRawPointer) -> UnsafeMutablePointer<UInt8> {
    raw(base).assumingMemoryBound(to: UInt8.self)
  }
}

/// One compiled operation: reads and writes the arena at fixed offsets.
typealias Kernel = (UnsafeMutableRawPointer, WorkerPool?) throws(RuntimeError) -> Void

struct Step: @unchecked Sendable {
  var label: String
  var run: Kernel
}

/// A static execution plan for one set of concrete input shapes: the steps in order, and one arena whose
/// layout was fixed at plan time by liveness (buffers whose lifetimes do not overlap share memory).
///
/// Executing allocates nothing on the hot path except the output tensors: arenas are recycled through a small
/// free list (one per concurrent inference), steps are pre-bound closures, kernels allocate nothing.
public final class ExecutionPlan: Sendable {
  public let inputShapes: [[Int]]
  public let outputShapes: [[Int]]
  /// Bytes of activation memory one concurrent inference needs.
  public let arenaBytes: Int
  /// Number of kernel steps after folding and fusion.
  public var stepCount: Int { steps.count }
  /// Step labels in execution order (for diagnostics and tests).
  public var stepLabels: [String] { steps.map(\.label) }

  enum OutputSource: @unchecked Sendable {
    case arena(offset: Int)
    case constant(HostTensor)
  }

  let steps: [Step]
  let inputOffsets: [Int]
  let inputTypes: [ElementType]
  let outputs: [(name: String, type: ElementType, source: OutputSource)]
  /// Constants referenced by address from the steps.
  let keepAlive: [TensorStorage]
  private let freeArenas: Mutex<[ArenaBuffer]>

  init(
    inputShapes: [[Int]], outputShapes: [[Int]], arenaBytes: Int, steps: [Step], inputOffsets: [Int],
    inputTypes: [ElementType], outputs: [(name: String, type: ElementType, source: OutputSource)],
    keepAlive: [TensorStorage]
  ) {
    self.inputShapes = inputShapes
    self.outputShapes = outputShapes
    self.arenaBytes = arenaBytes
    self.steps = steps
    self.inputOffsets = inputOffsets
    self.inputTypes = inputTypes
    self.outputs = outputs
    self.keepAlive = keepAlive
    self.freeArenas = Mutex([])
  }

  /// Runs the plan `iterations` times and returns each step's label and fastest time in nanoseconds
  /// (diagnostics; the minimum is robust to preemption on a shared machine).
  public func profile(_ inputs: [Tensor], iterations: Int, pool: WorkerPool?) throws(RuntimeError) -> [(String, Double)]
  {
    _ = try execute(inputs, pool: pool)
    let arena = ArenaBuffer(byteCount: arenaBytes)
    for (i, tensor) in inputs.enumerated() {
      if case .fixed(let bytes) = tensor.storage, bytes.count <= arenaBytes - inputOffsets[i] {
        bytes.withUnsafeBytes { src in
          if let s = src.baseAddress, src.count > 0 {
            (arena.raw + inputOffsets[i]).copyMemory(from: s, byteCount: src.count)
          }
        }
      }
    }
    var totals = [Double](repeating: .infinity, count: steps.count)
    for _ in 0..<max(iterations, 1) {
      for (i, step) in steps.enumerated() {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try step.run(arena.raw, pool)
        totals[i] = min(totals[i], Double(DispatchTime.now().uptimeNanoseconds - t0))
      }
    }
    return zip(steps, totals).map { ($0.label, $1) }
  }

  /// Runs the plan. `inputs` are in the model's input order and already match ``inputShapes``.
  func execute(_ inputs: [Tensor], pool: WorkerPool?) throws(RuntimeError) -> [Tensor] {
    let arena = freeArenas.withLock { $0.popLast() } ?? ArenaBuffer(byteCount: arenaBytes)
    defer {
      freeArenas.withLock { list in
        if list.count < 8 { list.append(arena) }
      }
    }
    let base = arena.raw
    for (i, tensor) in inputs.enumerated() {
      guard case .fixed(let bytes) = tensor.storage else {
        throw RuntimeError(.invalidInput, "input '\(tensor.name.sanitizedForModelMessage)' must be fixed-width")
      }
      var expected = inputTypes[i].size
      for d in inputShapes[i] { expected *= d }
      guard bytes.count == expected else {
        throw RuntimeError(
          .invalidInput,
          "input '\(tensor.name.sanitizedForModelMessage)' has \(bytes.count) bytes, expected \(expected)")
      }
      bytes.withUnsafeBytes { src in
        if let s = src.baseAddress, src.count > 0 { (base + inputOffsets[i]).copyMemory(from: s, byteCount: src.count) }
      }
    }
    for step in steps {
      try step.run(base, pool)
    }
    var results: [Tensor] = []
    results.reserveCapacity(outputs.count)
    for (index, output) in outputs.enumerated() {
      let shape = outputShapes[index]
      var count = output.type.size
      for d in shape { count *= d }
      let src: UnsafeRawPointer
      switch output.source {
      case .arena(let offset): src = UnsafeRawPointer(base + offset)
      case .constant(let t): src = UnsafeRawPointer(t.storage.raw)
      }
      let bytes = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
        if let dst = buffer.baseAddress, count > 0 {
          UnsafeMutableRawPointer(dst).copyMemory(from: src, byteCount: count)
        }
        initialized = count
      }
      do {
        results.append(
          try Tensor(
            name: output.name, datatype: output.type.dataType, shape: shape.map { Int64($0) }, storage: .fixed(bytes)))
      } catch {
        throw RuntimeError(.invalidInput, "output '\(output.name.sanitizedForModelMessage)': \(error.message)")
      }
    }
    return results
  }
}

/// One inference's activation memory.
final class ArenaBuffer: @unchecked Sendable {
  let raw: UnsafeMutableRawPointer
  init(byteCount: Int) {
    raw = .allocate(byteCount: max(byteCount, 64), alignment: 64)
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 64))
  }
  deinit { raw.deallocate() }
}
