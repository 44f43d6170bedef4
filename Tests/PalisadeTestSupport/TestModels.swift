import Synchronization
import PalisadeCore

/// Triton's classic `simple` model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 over INT32 [1, 16].
/// Test-only: the product serves no built-in model.
public struct AddSubModel: ServableModel {
  public let descriptor: ModelDescriptor

  public init(name: String = "simple", version: String = "1") {
    descriptor = ModelDescriptor(
      name: name, version: version, platform: "test",
      inputs: [
        TensorSpec(name: "INPUT0", datatype: .int32, shape: [1, 16]),
        TensorSpec(name: "INPUT1", datatype: .int32, shape: [1, 16]),
      ],
      outputs: [
        TensorSpec(name: "OUTPUT0", datatype: .int32, shape: [1, 16]),
        TensorSpec(name: "OUTPUT1", datatype: .int32, shape: [1, 16]),
      ])
  }

  public func infer(_ request: InferenceRequest) async throws -> [Tensor] {
    guard let a = request.input("INPUT0")?.values(as: Int32.self),
      let b = request.input("INPUT1")?.values(as: Int32.self)
    else { throw PalisadeError(.internal, "inputs missing") }
    return [
      try Tensor(name: "OUTPUT0", shape: [1, 16], values: zip(a, b).map { $0 &+ $1 }),
      try Tensor(name: "OUTPUT1", shape: [1, 16], values: zip(a, b).map { $0 &- $1 }),
    ]
  }
}

/// Returns its input unchanged: one model per datatype exercises every wire encoding.
public struct IdentityModel: ServableModel {
  public let descriptor: ModelDescriptor

  public init(datatype: DataType, version: String = "1") {
    descriptor = ModelDescriptor(
      name: "identity_\(datatype.rawValue.lowercased())", version: version, platform: "test",
      inputs: [TensorSpec(name: "IN", datatype: datatype, shape: [-1, -1])],
      outputs: [TensorSpec(name: "OUT", datatype: datatype, shape: [-1, -1])])
  }

  public func infer(_ request: InferenceRequest) async throws -> [Tensor] {
    guard var t = request.input("IN") else { throw PalisadeError(.internal, "input missing") }
    t.name = "OUT"
    return [t]
  }
}

/// Sleeps before echoing: lets tests hold calls in flight (graceful shutdown, hot swap).
public struct SlowModel: ServableModel {
  public let descriptor: ModelDescriptor
  let delay: Duration
  let started: AsyncStream<Void>.Continuation?

  /// `started` is told each time an inference begins.
  public init(name: String = "slow", delay: Duration, started: AsyncStream<Void>.Continuation? = nil) {
    self.delay = delay
    self.started = started
    descriptor = ModelDescriptor(
      name: name, version: "1", platform: "test",
      inputs: [TensorSpec(name: "IN", datatype: .fp32, shape: [-1])],
      outputs: [TensorSpec(name: "OUT", datatype: .fp32, shape: [-1])])
  }

  public func infer(_ request: InferenceRequest) async throws -> [Tensor] {
    started?.yield()
    try await Task.sleep(for: delay)
    guard var t = request.input("IN") else { throw PalisadeError(.internal, "input missing") }
    t.name = "OUT"
    return [t]
  }
}

/// OUT = 2 × IN over FP32 [-1, 4]; records the rows of every execution, so tests see dynamic batching at work.
/// `gate`, when set, holds every execution until it is opened, and `failing` makes executions fail.
public final class DoublingModel: ServableModel, Sendable {
  public let descriptor: ModelDescriptor
  private let state = Mutex<(rows: [Int], closed: Bool, failing: Bool, waiters: [CheckedContinuation<Void, Never>])>(
    ([], false, false, []))

  public init(name: String = "double", version: String = "1", maxBatch: Int? = nil, gated: Bool = false) {
    descriptor = ModelDescriptor(
      name: name, version: version, platform: "test",
      inputs: [TensorSpec(name: "IN", datatype: .fp32, shape: [-1, 4])],
      outputs: [TensorSpec(name: "OUT", datatype: .fp32, shape: [-1, 4])],
      contract: ModelContract(maxBatch: maxBatch))
    state.withLock { $0.closed = gated }
  }

  /// Rows of each execution so far.
  public var executions: [Int] { state.withLock { $0.rows } }

  /// Opens or closes the gate; opening releases every held execution.
  public func setGate(open: Bool) {
    let released = state.withLock { s -> [CheckedContinuation<Void, Never>] in
      s.closed = !open
      guard open else { return [] }
      defer { s.waiters = [] }
      return s.waiters
    }
    for w in released { w.resume() }
  }

  /// Makes executions fail (INTERNAL) or succeed.
  public func setFailing(_ failing: Bool) { state.withLock { $0.failing = failing } }

  public func infer(_ request: InferenceRequest) async throws -> [Tensor] {
    guard let input = request.input("IN"), let values = input.values(as: Float.self) else {
      throw PalisadeError(.internal, "input missing")
    }
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
      let hold = state.withLock { s -> Bool in
        s.rows.append(Int(input.shape.first ?? 0))
        if s.closed { s.waiters.append(c) }
        return s.closed
      }
      if !hold { c.resume() }
    }
    if state.withLock({ $0.failing }) { throw PalisadeError(.internal, "model failure (test)") }
    return [try Tensor(name: "OUT", shape: input.shape, values: values.map { $0 * 2 })]
  }
}

/// A four-class classifier over FP32 [-1, 4]: the scores are the input rolled by `roll` places (so a non-zero
/// roll shifts every predicted label), optionally slow, failing on any non-zero input (warm-up runs on zeros, so
/// it loads), or answering NaN. Rollout tests make candidate versions from it.
public struct ClassifierModel: ServableModel {
  public let descriptor: ModelDescriptor
  let roll: Int
  let delay: Duration
  let failOnNonZero: Bool
  let nonFinite: Bool

  public init(
    name: String = "classify", version: String = "1", roll: Int = 0, delay: Duration = .zero,
    failOnNonZero: Bool = false,
    nonFinite: Bool = false
  ) {
    self.roll = roll
    self.delay = delay
    self.failOnNonZero = failOnNonZero
    self.nonFinite = nonFinite
    descriptor = ModelDescriptor(
      name: name, version: version, platform: "test",
      inputs: [TensorSpec(name: "IN", datatype: .fp32, shape: [-1, 4])],
      outputs: [TensorSpec(name: "SCORES", datatype: .fp32, shape: [-1, 4])])
  }

  public func infer(_ request: InferenceRequest) async throws -> [Tensor] {
    guard let t = request.input("IN"), let x = t.values(as: Float.self) else {
      throw PalisadeError(.internal, "input missing")
    }
    if delay > .zero { try await Task.sleep(for: delay) }
    if failOnNonZero, x.contains(where: { $0 != 0 }) { throw PalisadeError(.internal, "model failed at run time") }
    var out = [Float](repeating: 0, count: x.count)
    for row in stride(from: 0, to: x.count, by: 4) {
      for j in 0..<4 { out[row + j] = nonFinite ? .nan : x[row + ((j + roll) % 4 + 4) % 4] }
    }
    return [try Tensor(name: "SCORES", shape: t.shape, values: out)]
  }
}
