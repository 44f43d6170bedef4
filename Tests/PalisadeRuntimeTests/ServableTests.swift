import Foundation
import PalisadeCore
import PalisadeKernels
import Testing
@testable import PalisadeRuntime

@Suite("Serving seam, plan specialisation and arena")
struct ServableTests {
  @Test func specsAndDescriptor() throws {
    let model = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent("mlp_digits.onnx"))
    #expect(model.inputSpecs == [TensorSpec(name: "input", datatype: .fp32, shape: [-1, 64])])
    #expect(
      model.outputSpecs == [
        TensorSpec(name: "label", datatype: .int64, shape: [-1]),
        TensorSpec(name: "probabilities", datatype: .fp32, shape: [-1, 10]),
      ])
    let d = model.descriptor(name: "digits", version: "1")
    #expect(d.platform == "onnx")
    // A descriptor that disagrees with the graph is refused.
    var wrong = d
    wrong.inputs[0].shape = [-1, 65]
    #expect(throws: RuntimeError.self) { try ONNXServableModel(model: model, descriptor: wrong) }
    wrong = d
    wrong.outputs[0].datatype = .fp32
    #expect(throws: RuntimeError.self) { try ONNXServableModel(model: model, descriptor: wrong) }
  }

  @Test func inferThroughTheSeam() async throws {
    let manifest = try Fixtures.manifest()
    let entry = try #require(manifest.models.first { $0.model == "encoder_torch.onnx" })
    let model = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent(entry.model))
    let servable = try ONNXServableModel(model: model, descriptor: model.descriptor(name: "enc", version: "1"))
    let c = entry.cases[1]
    let inputs = try c.inputs.map(Fixtures.tensor)
    let expected = try c.outputs.map(Fixtures.tensor)
    // Concurrent calls share the plan; each gets its own arena.
    try await withThrowingTaskGroup(of: [Tensor].self) { group in
      for _ in 0..<8 { group.addTask { try await servable.infer(InferenceRequest(inputs: inputs)) } }
      for try await outputs in group {
        #expect(Fixtures.compare(outputs[0], expected[0]) == nil)
      }
    }
    // A bad input is the caller's error.
    let bad = try Tensor(name: "input", shape: [1, 15, 64], values: [Float](repeating: 0, count: 15 * 64))
    await #expect(throws: PalisadeError.self) { try await servable.infer(InferenceRequest(inputs: [bad])) }
    do {
      _ = try await servable.infer(InferenceRequest(inputs: [bad]))
    } catch let error as PalisadeError {
      #expect(error.code == .invalidArgument)
    }
  }

  @Test(
    "a batch size never seen before gives the rows of a larger batch",
    arguments: ["mlp_torch.onnx", "cnn_torch.onnx", "encoder_torch.onnx", "mlp_digits.onnx"])
  func batchSpecialisation(_ name: String) throws {
    let manifest = try Fixtures.manifest()
    let entry = try #require(manifest.models.first { $0.model == name })
    let model = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent(name))
    let big = try #require(entry.cases.first { $0.batch == 32 })
    let input = try Fixtures.tensor(big.inputs[0])
    let rows = 5
    let rowBytes = input.rawContents.count / 32
    let small = try Tensor(
      name: input.name, datatype: input.datatype, shape: [Int64(rows)] + input.shape.dropFirst(),
      storage: .fixed(Array(input.rawContents.prefix(rows * rowBytes))))
    let out = try model.predict([small])
    let expected = try big.outputs.map(Fixtures.tensor)
    for (o, e) in zip(out, expected) {
      let eRow = e.rawContents.count / 32
      let truncated = try Tensor(
        name: e.name, datatype: e.datatype, shape: [Int64(rows)] + e.shape.dropFirst(),
        storage: .fixed(Array(e.rawContents.prefix(rows * eRow))))
      #expect(Fixtures.compare(o, truncated) == nil)
    }
    let plan = try model.plan(for: [[rows] + input.shape.dropFirst().map { Int($0) }])
    #expect(plan.outputShapes[0].first == rows)
  }

  @Test func fusionAndArenaReuse() throws {
    let mlp = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent("mlp_torch.onnx"))
    let plan = try mlp.plan(for: [[32, 64]])
    #expect(plan.stepLabels.count == 4)
    #expect(plan.stepLabels[0].hasPrefix("Dense(") && plan.stepLabels[0].hasSuffix("+bias+Relu)"))
    #expect(plan.stepLabels[1].hasSuffix("+bias+Gelu)"))  // the exported erf subgraph became one epilogue
    let enc = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent("encoder_torch.onnx"))
    let p = try enc.plan(for: [[32, 16, 64]])
    #expect(!p.stepLabels.contains { $0.hasPrefix("Shape") || $0.hasPrefix("Concat") || $0.hasPrefix("Erf") })
    // Liveness: the arena is far smaller than all intermediates together (21 steps, most [32,16,64..192]).
    #expect(p.arenaBytes < 8 * 32 * 16 * 192 * 4)
  }

  @Test func comparatorCatchesDifferences() throws {
    let a = try Tensor(name: "t", shape: [3], values: [Float(1), 2, 3])
    let b = try Tensor(name: "t", shape: [3], values: [Float(1), 2.001, 3])
    let c = try Tensor(name: "t", shape: [3], values: [Float(1), 2.0001, 3])
    let n = try Tensor(name: "t", shape: [3], values: [Float(1), .nan, 3])
    #expect(Fixtures.compare(a, b) != nil)
    #expect(Fixtures.compare(a, c) == nil)
    #expect(Fixtures.compare(n, a) != nil)
  }
}

@Suite("ModelRuntime seam")
struct ModelRuntimeTests {
  @Test func loadsThroughTheRuntime() async throws {
    let runtime = ONNXModelRuntime()
    #expect(runtime.fileExtensions == ["onnx"])
    let bytes = try Fixtures.bytes("mlp_torch_ext.onnx")
    let data = try Fixtures.bytes("mlp_torch_ext.onnx.data")
    let probe = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent("mlp_torch_ext.onnx"))
    let descriptor = probe.descriptor(name: "mlp", version: "1")
    let files = ModelFiles(
      modelFileName: "mlp_torch_ext.onnx", files: ["mlp_torch_ext.onnx": bytes, "mlp_torch_ext.onnx.data": data])
    let servable = try await runtime.load(files: files, descriptor: descriptor)
    #expect(servable.descriptor == descriptor)
    let x = try Tensor(name: "input", shape: [2, 64], values: [Float](repeating: 0.5, count: 128))
    let out = try await servable.infer(InferenceRequest(inputs: [x]))
    #expect(out[0].shape == [2, 10])
    // A corrupt file is a failed precondition with the reason.
    do {
      let corrupt = ModelFiles(
        modelFileName: "mlp_torch_ext.onnx", files: ["mlp_torch_ext.onnx": Array(bytes.prefix(40))])
      _ = try await runtime.load(files: corrupt, descriptor: descriptor)
      Issue.record("corrupt model loaded")
    } catch let error as PalisadeError {
      #expect(error.code == .failedPrecondition)
    }
  }

  /// The runtime resolves external data only against the verified files it is handed, never the file system: the
  /// fixture's `.onnx.data` exists on disk beside the model, but without it among the files the load fails.
  @Test func externalDataComesOnlyFromTheGivenFiles() async throws {
    let runtime = ONNXModelRuntime()
    let bytes = try Fixtures.bytes("mlp_torch_ext.onnx")
    let data = try Fixtures.bytes("mlp_torch_ext.onnx.data")
    let descriptor = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent("mlp_torch_ext.onnx"))
      .descriptor(name: "mlp", version: "1")
    do {
      _ = try await runtime.load(
        files: ModelFiles(modelFileName: "mlp_torch_ext.onnx", files: ["mlp_torch_ext.onnx": bytes]),
        descriptor: descriptor)
      Issue.record("external data was found outside the given files")
    } catch let error as PalisadeError {
      #expect(error.code == .failedPrecondition)
      #expect(error.message.contains("not among the bundle's verified files"), "\(error.message)")
    }
    // Locations are relative to the model file's directory inside the bundle; files elsewhere are not reachable.
    let nested = ModelFiles(
      modelFileName: "onnx/mlp_torch_ext.onnx",
      files: ["onnx/mlp_torch_ext.onnx": bytes, "onnx/mlp_torch_ext.onnx.data": data, "other/x.bin": [1, 2, 3]])
    #expect(Set(nested.siblingsOfModelFile.keys) == ["mlp_torch_ext.onnx.data"])
    let servable = try await runtime.load(files: nested, descriptor: descriptor)
    let x = try Tensor(name: "input", shape: [1, 64], values: [Float](repeating: 0.25, count: 64))
    #expect(try await servable.infer(InferenceRequest(inputs: [x]))[0].shape == [1, 10])
    let elsewhere = ModelFiles(
      modelFileName: "onnx/mlp_torch_ext.onnx",
      files: ["onnx/mlp_torch_ext.onnx": bytes, "mlp_torch_ext.onnx.data": data])
    await #expect(throws: PalisadeError.self) { _ = try await runtime.load(files: elsewhere, descriptor: descriptor) }
  }
}
