import Foundation
import PalisadeCore
import PalisadeProto
import PalisadeServer
import Testing

/// Stage 9 on its own: top-k, rounding, label-only, the published outputs, and padding to size buckets.
@Suite struct OutputHardenerTests {
  func descriptor(_ policy: OutputPolicy) -> ModelDescriptor {
    ModelDescriptor(
      name: "m", version: "1", platform: "test", inputs: [TensorSpec(name: "x", datatype: .fp32, shape: [-1, 4])],
      outputs: [
        TensorSpec(name: "label", datatype: .int64, shape: [-1]),
        TensorSpec(name: "probabilities", datatype: .fp32, shape: [-1, 4]),
      ], outputPolicy: policy)
  }

  func outputs() throws -> [Tensor] {
    [
      try Tensor(name: "label", shape: [2], values: [Int64(2), 0]),
      try Tensor(name: "probabilities", shape: [2, 4], values: [Float(0.1), 0.2, 0.6123456, 0.1, 0.7, 0.1, 0.1, 0.1]),
    ]
  }

  func strings(_ t: Tensor) -> [String] { (t.byteElements ?? []).map { String(decoding: $0, as: UTF8.self) } }

  @Test func passThroughLeavesOutputsAlone() throws {
    #expect(try OutputHardener().harden(try outputs(), descriptor: descriptor(.passThrough)) == (try outputs()))
  }

  @Test func topKKeepsTheBestScoresWithIndexAndLabel() throws {
    let d = descriptor(OutputPolicy(topK: 2, roundDecimals: 2, labels: ["a", "b", "c", "d"]))
    let out = try OutputHardener().harden(try outputs(), descriptor: d)
    #expect(out[0] == (try outputs())[0], "non-score outputs pass")
    #expect(out[1].datatype == .bytes && out[1].shape == [2, 2])
    #expect(strings(out[1]) == ["0.61:2:c", "0.20:1:b", "0.70:0:a", "0.10:1:b"])
    let published = OutputHardener().publishedOutputs(d)
    #expect(published[1] == TensorSpec(name: "probabilities", datatype: .bytes, shape: [-1, 2]))
  }

  @Test func roundingKeepsTheDatatype() throws {
    let out = try OutputHardener().harden(try outputs(), descriptor: descriptor(OutputPolicy(roundDecimals: 1)))
    #expect(out[1].datatype == .fp32)
    #expect(out[1].values(as: Float.self) == [0.1, 0.2, 0.6, 0.1, 0.7, 0.1, 0.1, 0.1])
  }

  @Test func labelOnlySendsOnlyTheArgMaxLabel() throws {
    let d = descriptor(OutputPolicy(labelOnly: true, labels: ["a", "b", "c", "d"]))
    let out = try OutputHardener().harden(try outputs(), descriptor: d)
    #expect(out[1].datatype == .bytes && out[1].shape == [2])
    #expect(strings(out[1]) == ["c", "a"])
    #expect(OutputHardener().publishedOutputs(d)[1] == TensorSpec(name: "probabilities", datatype: .bytes, shape: [-1]))
    // Without labels the class index stands in.
    let unlabelled = try OutputHardener().harden(try outputs(), descriptor: descriptor(OutputPolicy(labelOnly: true)))
    #expect(strings(unlabelled[1]) == ["2", "0"])
  }

  @Test func paddedResponsesHaveEqualSizesWhateverTheyHold() throws {
    let padding = ResponsePadding()
    var sizes: Set<Int> = []
    for (label, extra) in [("a", 0), ("a-much-longer-label", 3), ("zz", 40), (String(repeating: "q", count: 200), 1)] {
      var r = Inference_ModelInferResponse()
      r.modelName = "m"
      r.id = String(repeating: "i", count: extra)
      r.outputs = [
        .with {
          $0.name = "probabilities"
          $0.datatype = "BYTES"
          $0.shape = [1]
        }
      ]
      r.rawOutputContents = [Data(label.utf8)]
      padding.pad(&r, bucket: 512)
      let size = try r.serializedBytes() as [UInt8]
      #expect(size.count % 512 == 0)
      sizes.insert(size.count)
    }
    #expect(sizes == [512])
    // Every size from 1 to 3 buckets lands exactly on a bucket boundary (varint length edges included).
    for n in 0..<700 {
      var r = Inference_ModelInferResponse()
      r.id = String(repeating: "x", count: n)
      padding.pad(&r, bucket: 128)
      #expect((try r.serializedBytes() as [UInt8]).count % 128 == 0, "n=\(n)")
    }
  }
}
