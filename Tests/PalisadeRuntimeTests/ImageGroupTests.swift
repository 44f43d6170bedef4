import Foundation
import PalisadeCore
import PalisadeKernels
import Testing
@testable import PalisadeRuntime

/// Consecutive convolutions and pools over a batch run as one step, chunk by chunk of images on the pool threads
/// (Planner image groups). Each image of a batch must come out exactly as it does alone (batch 1 is not grouped
/// and runs the same per-image kernels), with and without a pool, for batches that split unevenly into chunks.
@Suite("Image groups (per-image chains of conv / pool steps)")
struct ImageGroupTests {
  static func values(_ n: Int, seed: Int) -> [Float] {
    (0..<n).map { i in Float(sin(Double(i * 13 + seed) * 0.377)) }
  }

  /// Conv 3x3 (+Relu) -> MaxPool 2x2 -> Conv 3x3 stride 2 -> AveragePool 2x2 -> Relu -> GlobalAveragePool on
  /// 2 x 15 x 15 images (odd sizes: the 2x2 pools drop a row and a column). A GEMM after the group would not
  /// compare exactly: its kernel sums in a different order for 1 row than for many.
  static func model() throws -> ONNXModel {
    let nodes = [
      Build.node("Conv", ["x", "w1", "b1"], ["c1"], ints: ["pads": [1, 1, 1, 1], "kernel_shape": [3, 3]]),
      Build.node("Relu", ["c1"], ["r1"]),
      Build.node("MaxPool", ["r1"], ["p1"], ints: ["kernel_shape": [2, 2], "strides": [2, 2]]),
      Build.node(
        "Conv", ["p1", "w2"], ["c2"], ints: ["pads": [1, 1, 1, 1], "strides": [2, 2], "kernel_shape": [3, 3]]),
      Build.node("AveragePool", ["c2"], ["p2"], ints: ["kernel_shape": [2, 2], "strides": [2, 2]]),
      Build.node("Relu", ["p2"], ["r2"]),
      Build.node("GlobalAveragePool", ["r2"], ["y"]),
    ]
    let bytes = try Build.model(
      nodes: nodes, inputs: [Build.value("x", 1, [nil, 2, 15, 15])], outputs: [Build.value("y", 1, [nil, 8, 1, 1])],
      initializers: [
        Build.floats("w1", [5, 2, 3, 3], values(90, seed: 1)), Build.floats("b1", [5], values(5, seed: 2)),
        Build.floats("w2", [8, 5, 3, 3], values(360, seed: 3)),
      ])
    return try ONNXModel.load(data: bytes)
  }

  @Test(arguments: [2, 3, 32, 37]) func eachImageMatchesItsOwnBatchOfOne(batch: Int) throws {
    let model = try Self.model()
    let plan = try model.plan(for: [[batch, 2, 15, 15]])
    #expect(plan.stepLabels.contains { $0.hasPrefix("Images(") }, "\(plan.stepLabels)")
    #expect(try !model.plan(for: [[1, 2, 15, 15]]).stepLabels.contains { $0.hasPrefix("Images(") })
    let image = 2 * 15 * 15
    let input = Self.values(batch * image, seed: 9)
    var expected: [Float] = []
    for n in 0..<batch {
      let one = try model.predict(
        [try Tensor(name: "x", shape: [1, 2, 15, 15], values: Array(input[(n * image)..<((n + 1) * image)]))])
      expected += try #require(one.first?.values(as: Float.self))
    }
    for pool in [nil, WorkerPool(threadCount: 1), WorkerPool(threadCount: 3)] {
      let output = try model.predict(
        [try Tensor(name: "x", shape: [Int64(batch), 2, 15, 15], values: input)], pool: pool)
      let got = try #require(output.first?.values(as: Float.self))
      #expect(got == expected, "batch \(batch), pool \(pool.map { "\($0.threadCount)" } ?? "none")")
    }
  }

  /// Buffers whose lifetimes do not overlap share memory, but inside a group image `n` of a later buffer is
  /// written before image `n + 1` of an earlier one: here the 16-channel output (1,024 floats per image) would
  /// land on the first convolution's output (256 per image) and overwrite images not yet pooled. Group buffers
  /// keep their memory for the whole group.
  @Test func laterBuffersDoNotOverwriteImagesNotYetRead() throws {
    let nodes = [
      Build.node("Conv", ["x", "w1"], ["c1"], ints: ["pads": [1, 1, 1, 1], "kernel_shape": [3, 3]]),
      Build.node("MaxPool", ["c1"], ["p1"], ints: ["kernel_shape": [2, 2], "strides": [2, 2]]),
      Build.node("Conv", ["p1", "w2"], ["c2"], ints: ["pads": [1, 1, 1, 1], "kernel_shape": [3, 3]]),
      Build.node("Relu", ["c2"], ["y"]),
    ]
    let bytes = try Build.model(
      nodes: nodes, inputs: [Build.value("x", 1, [nil, 1, 16, 16])], outputs: [Build.value("y", 1, [nil, 16, 8, 8])],
      initializers: [
        Build.floats("w1", [1, 1, 3, 3], Self.values(9, seed: 5)),
        Build.floats("w2", [16, 1, 3, 3], Self.values(144, seed: 6)),
      ])
    let model = try ONNXModel.load(data: bytes)
    let batch = 9
    let input = Self.values(batch * 256, seed: 7)
    var expected: [Float] = []
    for n in 0..<batch {
      let one = try model.predict(
        [try Tensor(name: "x", shape: [1, 1, 16, 16], values: Array(input[(n * 256)..<((n + 1) * 256)]))])
      expected += try #require(one.first?.values(as: Float.self))
    }
    #expect(try model.plan(for: [[batch, 1, 16, 16]]).stepLabels.contains { $0.hasPrefix("Images(") })
    for pool in [nil, WorkerPool(threadCount: 2)] {
      let output = try model.predict(
        [try Tensor(name: "x", shape: [Int64(batch), 1, 16, 16], values: input)], pool: pool)
      #expect(output.first?.values(as: Float.self) == expected)
    }
  }
}
