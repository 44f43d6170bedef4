import Foundation
import PalisadeCore
import PalisadeKernels
import PalisadeONNXProto
import Testing
@testable import PalisadeRuntime

/// Conv → Relu → BatchNormalization runs as one step (the normalisation applied to the convolution's output
/// registers, or in a pass after the GEMM path); each kernel path against a plain reference.
@Suite("Conv + Relu + BatchNormalization fusion")
struct FusionTests {
  struct Geometry: Sendable, CustomTestStringConvertible {
    var name: String
    var cin: Int, cout: Int, h: Int, w: Int
    var stride: Int, pad: Int, dilation: Int
    var testDescription: String { name }
  }

  static let geometries = [
    // outW >= 12, stride 1: the flat kernel (24 contiguous outputs x 4 channels; Cout 6 leaves a 2-channel group).
    Geometry(name: "flat", cin: 3, cout: 6, h: 14, w: 14, stride: 1, pad: 1, dilation: 1),
    // odd sizes: 13 x 17 outputs (221 per channel: 9 blocks of 24, then a 5-lane vector), 7 channels.
    Geometry(name: "flat-odd", cin: 2, cout: 7, h: 13, w: 17, stride: 1, pad: 1, dilation: 1),
    // 9 x 21 = 189 outputs: 7 blocks of 24, then 3 tail vectors (the last 5 lanes) for 8 + 3 channels.
    Geometry(name: "flat-tail", cin: 2, cout: 11, h: 9, w: 21, stride: 1, pad: 1, dilation: 1),
    // unpadded, Cin 1 (the first layer of a CNN): 26 x 26 outputs, one 4-channel group.
    Geometry(name: "flat-unpadded", cin: 1, cout: 4, h: 28, w: 28, stride: 1, pad: 0, dilation: 1),
    // outW >= 12, stride 2: the direct kernel (16 columns x 4 channels in registers).
    Geometry(name: "direct", cin: 3, cout: 6, h: 28, w: 28, stride: 2, pad: 1, dilation: 1),
    // narrow output, Cout a multiple of 8: the channel-vectorised kernel (two pixels per weight load, odd width).
    Geometry(name: "channel-vector", cin: 4, cout: 16, h: 9, w: 9, stride: 2, pad: 1, dilation: 1),
    // dilation 2 and 5 channels: neither direct kernel applies; im2col + GEMM, then the normalisation pass.
    Geometry(name: "gemm", cin: 2, cout: 5, h: 10, w: 10, stride: 1, pad: 2, dilation: 2),
  ]

  static func values(_ n: Int, seed: Int) -> [Float] {
    (0..<n).map { i in Float(sin(Double(i * 7 + seed) * 0.731)) }
  }

  @Test(arguments: geometries) func matchesTheUnfusedReference(g: Geometry) throws {
    let batch = 3
    let weights = Self.values(g.cout * g.cin * 9, seed: 1)
    let bias = Self.values(g.cout, seed: 2)
    let scale = Self.values(g.cout, seed: 3).map { $0 + 1.5 }  // some negative-free, some large
    let shift = Self.values(g.cout, seed: 4)
    let mean = Self.values(g.cout, seed: 5)
    let variance = Self.values(g.cout, seed: 6).map { abs($0) + 0.2 }
    var conv = Build.node(
      "Conv", ["x", "w", "b"], ["c"],
      ints: [
        "strides": [Int64(g.stride), Int64(g.stride)], "pads": Array(repeating: Int64(g.pad), count: 4),
        "dilations": [Int64(g.dilation), Int64(g.dilation)], "kernel_shape": [3, 3],
      ])
    conv.name = "conv"
    let bytes = try Build.model(
      nodes: [
        conv, Build.node("Relu", ["c"], ["r"]), Build.node("BatchNormalization", ["r", "s", "t", "m", "v"], ["y"]),
      ],
      inputs: [Build.value("x", 1, [nil, Int64(g.cin), Int64(g.h), Int64(g.w)])],
      outputs: [Build.value("y", 1, [nil, Int64(g.cout), nil, nil])],
      initializers: [
        Build.floats("w", [Int64(g.cout), Int64(g.cin), 3, 3], weights), Build.floats("b", [Int64(g.cout)], bias),
        Build.floats("s", [Int64(g.cout)], scale), Build.floats("t", [Int64(g.cout)], shift),
        Build.floats("m", [Int64(g.cout)], mean), Build.floats("v", [Int64(g.cout)], variance),
      ])
    let model = try ONNXModel.load(data: bytes)
    let input = Self.values(batch * g.cin * g.h * g.w, seed: 7)
    let plan = try model.plan(for: [[batch, g.cin, g.h, g.w]])
    #expect(plan.stepLabels.contains { $0.hasSuffix("+Relu+BatchNormalization") }, "\(plan.stepLabels)")

    let span = g.dilation * 2 + 1
    let outH = (g.h + 2 * g.pad - span) / g.stride + 1
    let outW = (g.w + 2 * g.pad - span) / g.stride + 1
    var expected = [Double](repeating: 0, count: batch * g.cout * outH * outW)
    for n in 0..<batch {
      for o in 0..<g.cout {
        let mul = Double(scale[o]) / (Double(variance[o]) + 1e-5).squareRoot()
        for oy in 0..<outH {
          for ox in 0..<outW {
            var sum = Double(bias[o])
            for c in 0..<g.cin {
              for ky in 0..<3 {
                for kx in 0..<3 {
                  let iy = oy * g.stride - g.pad + ky * g.dilation
                  let ix = ox * g.stride - g.pad + kx * g.dilation
                  guard iy >= 0, iy < g.h, ix >= 0, ix < g.w else { continue }
                  sum +=
                    Double(input[((n * g.cin + c) * g.h + iy) * g.w + ix])
                    * Double(weights[((o * g.cin + c) * 3 + ky) * 3 + kx])
                }
              }
            }
            let relu = max(sum, 0)
            expected[((n * g.cout + o) * outH + oy) * outW + ox] = (relu - Double(mean[o])) * mul + Double(shift[o])
          }
        }
      }
    }
    for pool in [nil, WorkerPool(threadCount: 2)] {
      let output = try model.predict(
        [try Tensor(name: "x", shape: [Int64(batch), Int64(g.cin), Int64(g.h), Int64(g.w)], values: input)], pool: pool)
      let got = try #require(output.first?.values(as: Float.self))
      #expect(got.count == expected.count)
      let bad = zip(got, expected).enumerated().first {
        abs(Double($0.element.0) - $0.element.1) > 1e-4 * max(1, abs($0.element.1))
      }
      #expect(bad == nil, "\(g.name), pool \(pool == nil ? "none" : "2"): first mismatch \(String(describing: bad))")
    }
  }

  /// The fused step's internal attributes come from the planner; a model file that sets them itself, with the
  /// wrong length, is refused when planned (never read past the end).
  @Test func aModelCarryingTheInternalAttributesIsRefused() throws {
    var conv = Build.node("Conv", ["x", "w"], ["y"], ints: ["kernel_shape": [3, 3]])
    for name in ["_post_mul", "_post_add"] {
      var a = Onnx_AttributeProto()
      a.name = name
      a.type = .floats
      a.floats = [1]
      conv.attribute.append(a)
    }
    let bytes = try Build.model(
      nodes: [conv], inputs: [Build.value("x", 1, [nil, 1, 8, 8])], outputs: [Build.value("y", 1, [nil, 4, nil, nil])],
      initializers: [Build.floats("w", [4, 1, 3, 3], [Float](repeating: 0.1, count: 36))])
    #expect(throws: RuntimeError.self) {
      let model = try ONNXModel.load(data: bytes)
      _ = try model.plan(for: [[1, 1, 8, 8]])
    }
  }
}
