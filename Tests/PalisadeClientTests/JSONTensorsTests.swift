import Foundation
import PalisadeProto
import Testing

@testable import PalisadeClient

/// `palisade call infer`'s JSON tensors: KServe v2 REST JSON in, the gRPC request out, and back for the answer.
/// What cannot be represented exactly is refused with the input's name, never sent altered.
@Suite struct JSONTensorsTests {
  private func request(_ json: String, raw: Bool = false) throws -> Inference_ModelInferRequest {
    try JSONTensors.request(model: "digits", version: "2", json: Data(json.utf8), raw: raw)
  }

  @Test func typedRequest() throws {
    let r = try request(
      #"{"id": "call-1", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3.5, 4]]}], "outputs": [{"name": "label"}]}"#
    )
    #expect(r.modelName == "digits")
    #expect(r.modelVersion == "2")
    #expect(r.id == "call-1")
    #expect(r.inputs.count == 1)
    #expect(r.inputs[0].name == "x")
    #expect(r.inputs[0].datatype == "FP32")
    #expect(r.inputs[0].shape == [2, 2])
    #expect(r.inputs[0].contents.fp32Contents == [1, 2, 3.5, 4], "nested data is flattened row-major")
    #expect(r.rawInputContents.isEmpty)
    #expect(r.outputs.map(\.name) == ["label"])
  }

  @Test func rawRequestIsLittleEndian() throws {
    let r = try request(#"{"inputs": [{"name": "x", "datatype": "INT32", "shape": [2], "data": [1, -2]}]}"#, raw: true)
    #expect(r.inputs[0].contents.intContents.isEmpty)
    #expect([UInt8](r.rawInputContents[0]) == [1, 0, 0, 0, 0xFE, 0xFF, 0xFF, 0xFF])
  }

  @Test func halfPrecisionAlwaysTravelsRaw() throws {
    let r = try request(#"{"inputs": [{"name": "h", "datatype": "FP16", "shape": [2], "data": [1.0, -2.0]}]}"#)
    #expect([UInt8](r.rawInputContents[0]) == [0x00, 0x3C, 0x00, 0xC0])
    let b = try request(#"{"inputs": [{"name": "b", "datatype": "BF16", "shape": [1], "data": [1.0]}]}"#)
    #expect([UInt8](b.rawInputContents[0]) == [0x80, 0x3F])
  }

  @Test func bytesRequest() throws {
    let r = try request(#"{"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ab", ""]}]}"#)
    #expect(r.inputs[0].contents.bytesContents == [Data("ab".utf8), Data()])
  }

  @Test func integersMustFitExactly() throws {
    let ok = try request(#"{"inputs": [{"name": "i", "datatype": "INT8", "shape": [3], "data": [-128, 127, 3.0]}]}"#)
    #expect(ok.inputs[0].contents.intContents == [-128, 127, 3])
    let big = try request(
      #"{"inputs": [{"name": "u", "datatype": "UINT64", "shape": [1], "data": [18446744073709551615]}]}"#)
    #expect(big.inputs[0].contents.uint64Contents == [UInt64.max])
    for (datatype, value) in [
      ("INT8", "300"), ("INT8", "-129"), ("UINT8", "-1"), ("INT32", "1.5"), ("UINT16", "70000"),
      ("INT64", "1e30"),
    ] {
      #expect {
        _ = try request(#"{"inputs": [{"name": "i", "datatype": "\#(datatype)", "shape": [1], "data": [\#(value)]}]}"#)
      } throws: { error in
        "\(error)".contains("input 'i'") && "\(error)".contains("is not a \(datatype) value")
      }
    }
  }

  @Test func malformedRequestsNameWhatIsWrong() {
    let cases: [(String, String)] = [
      (#"[1, 2]"#, "must be a JSON object"),
      (#"{"inputs": []}"#, "non-empty \"inputs\" list"),
      (#"{"inputs": [{"datatype": "FP32", "shape": [1], "data": [1]}]}"#, "an input has no \"name\""),
      (
        #"{"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1], "data": [1]}]}"#,
        "input 'x': \"datatype\" must be one of"
      ),
      (
        #"{"inputs": [{"name": "x", "datatype": "FP32", "shape": "1", "data": [1]}]}"#,
        "input 'x': \"shape\" must be a list"
      ),
      (
        #"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["a"]}]}"#,
        "input 'x': \"data\" must hold numbers"
      ),
      (
        #"{"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1], "data": [1]}]}"#,
        "input 's': BYTES data must be strings"
      ),
      (
        #"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [{}]}"#,
        "needs a \"name\""
      ),
    ]
    for (json, message) in cases {
      #expect(throws: (any Error).self, "\(json)") { _ = try request(json) }
      do { _ = try request(json) } catch { #expect("\(error)".contains(message), "\(json): \(error)") }
    }
    #expect(throws: (any Error).self) {
      _ = try request(#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1, 2]}]}"#)
    }
  }

  @Test func responseAsJSON() throws {
    var response = Inference_ModelInferResponse()
    response.modelName = "digits"
    response.modelVersion = "2"
    response.id = "call-1"
    var typed = Inference_ModelInferResponse.InferOutputTensor()
    typed.name = "probabilities"
    typed.datatype = "FP32"
    typed.shape = [1, 2]
    typed.contents.fp32Contents = [0.25, 0.75]
    response.outputs = [typed]
    let json = try JSONTensors.json(response)
    let root = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
    #expect(root["model_name"] as? String == "digits")
    let out = try #require((root["outputs"] as? [[String: Any]])?.first)
    #expect(out["name"] as? String == "probabilities")
    #expect((out["data"] as? [Double]) == [0.25, 0.75])

    var rawOut = Inference_ModelInferResponse.InferOutputTensor()
    rawOut.name = "label"
    rawOut.datatype = "INT64"
    rawOut.shape = [1]
    var raw = Inference_ModelInferResponse()
    raw.outputs = [rawOut]
    raw.rawOutputContents = [Data([7, 0, 0, 0, 0, 0, 0, 0])]
    let rawRoot = try #require(try JSONSerialization.jsonObject(with: try JSONTensors.json(raw)) as? [String: Any])
    #expect(((rawRoot["outputs"] as? [[String: Any]])?.first?["data"] as? [Int]) == [7])
  }
}
