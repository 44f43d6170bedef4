import Foundation
import PalisadeCore
import PalisadeProto
import Testing

@testable import PalisadeWire

@Suite struct WireTensorDecoderTests {
  func input(_ name: String, _ dt: String, _ shape: [Int64], contents: Inference_InferTensorContents? = nil)
    -> Inference_ModelInferRequest.InferInputTensor
  {
    .with {
      $0.name = name
      $0.datatype = dt
      $0.shape = shape
      if let contents { $0.contents = contents }
    }
  }

  func refusal(_ request: Inference_ModelInferRequest) -> PalisadeError? {
    do {
      _ = try WireTensorDecoder.decode(request)
      return nil
    } catch { return error }
  }

  @Test func typedFP32Decodes() throws {
    let r = Inference_ModelInferRequest.with {
      $0.inputs = [input("x", "FP32", [1, 2], contents: .with { $0.fp32Contents = [1, 2] })]
    }
    let t = try WireTensorDecoder.decode(r)
    #expect(t[0].values(as: Float.self) == [1, 2])
  }

  @Test func rawBytesDecodesLengthPrefixedElements() throws {
    let r = Inference_ModelInferRequest.with {
      $0.inputs = [input("s", "BYTES", [2])]
      $0.rawInputContents = [Data([2, 0, 0, 0, 0x68, 0x69, 0, 0, 0, 0])]
    }
    #expect(try WireTensorDecoder.decode(r)[0].byteElements == [[0x68, 0x69], []])
  }

  @Test func rawFP16Decodes() throws {
    let r = Inference_ModelInferRequest.with {
      $0.inputs = [input("h", "FP16", [1, 2])]
      $0.rawInputContents = [Data([0x00, 0x3C, 0x00, 0xC0])]
    }
    #expect(try WireTensorDecoder.decode(r)[0].rawContents == [0x00, 0x3C, 0x00, 0xC0])
  }

  @Test func unknownDatatypeIsRefusedByName() {
    let e = refusal(.with { $0.inputs = [input("x", "FLOAT", [1], contents: .with { $0.fp32Contents = [1] })] })
    #expect(e?.code == .invalidArgument)
    #expect(e?.message.contains("'x'") == true)
  }

  @Test func wrongTypedFieldIsRefused() {
    let e = refusal(.with { $0.inputs = [input("x", "FP32", [1], contents: .with { $0.intContents = [1] })] })
    #expect(e?.message.contains("fp32_contents") == true)
  }

  @Test func typedCountMismatchIsRefused() {
    let e = refusal(.with { $0.inputs = [input("x", "FP32", [3], contents: .with { $0.fp32Contents = [1, 2] })] })
    #expect(e?.code == .invalidArgument)
  }

  @Test func rawLengthMismatchIsRefused() {
    let e = refusal(
      .with {
        $0.inputs = [input("x", "FP32", [2])]
        $0.rawInputContents = [Data(count: 7)]
      })
    #expect(e?.message.contains("input 'x'") == true)
    #expect(e?.message.contains("7 bytes") == true)
  }

  @Test func mixingTypedAndRawIsRefused() {
    let e = refusal(
      .with {
        $0.inputs = [input("x", "FP32", [1], contents: .with { $0.fp32Contents = [1] })]
        $0.rawInputContents = [Data(count: 4)]
      })
    #expect(e?.message.contains("mixed") == true)
  }

  @Test func rawCountMustMatchInputs() {
    let e = refusal(
      .with {
        $0.inputs = [input("x", "FP32", [1]), input("y", "FP32", [1])]
        $0.rawInputContents = [Data(count: 4)]
      })
    #expect(e?.code == .invalidArgument)
  }

  @Test func overflowingShapeIsRefusedWithoutTrapping() {
    let e = refusal(
      .with {
        $0.inputs = [input("big", "FP32", [1 << 40, 1 << 40])]
        $0.rawInputContents = [Data(count: 4)]
      })
    #expect(e?.message.contains("overflows") == true)
    let e2 = refusal(.with { $0.inputs = [input("neg", "FP32", [-3], contents: .with { $0.fp32Contents = [1] })] })
    #expect(e2?.code == .invalidArgument)
    // Element count fits Int, byte size does not.
    let e3 = refusal(
      .with {
        $0.inputs = [input("wide", "FP64", [Int64(Int.max / 4)])]
        $0.rawInputContents = [Data(count: 8)]
      })
    #expect(e3?.message.contains("overflows") == true)
  }

  @Test func truncatedBytesElementsAreRefused() {
    let short = refusal(
      .with {
        $0.inputs = [input("s", "BYTES", [1])]
        $0.rawInputContents = [Data([9, 0, 0, 0, 1, 2])]
      })
    #expect(short?.message.contains("longer than the remaining") == true)
    let prefix = refusal(
      .with {
        $0.inputs = [input("s", "BYTES", [1])]
        $0.rawInputContents = [Data([1, 0])]
      })
    #expect(prefix?.code == .invalidArgument)
    let extra = refusal(
      .with {
        $0.inputs = [input("s", "BYTES", [1])]
        $0.rawInputContents = [Data([0, 0, 0, 0, 0, 0, 0, 0])]
      })
    #expect(extra?.code == .invalidArgument)
  }

  @Test func narrowIntegersAreRangeChecked() {
    let e = refusal(.with { $0.inputs = [input("i", "INT8", [1], contents: .with { $0.intContents = [300] })] })
    #expect(e?.message.contains("out of range") == true)
    let u = refusal(.with { $0.inputs = [input("u", "UINT16", [1], contents: .with { $0.uintContents = [70_000] })] })
    #expect(u?.code == .invalidArgument)
  }

  @Test func typedFP16IsRefused() {
    let e = refusal(.with { $0.inputs = [input("h", "FP16", [1], contents: .with { $0.fp32Contents = [1] })] })
    #expect(e?.message.contains("raw_input_contents") == true)
  }

  @Test func duplicateAndUnnamedInputsAreRefused() {
    let dup = refusal(
      .with {
        $0.inputs = [
          input("x", "FP32", [1], contents: .with { $0.fp32Contents = [1] }),
          input("x", "FP32", [1], contents: .with { $0.fp32Contents = [1] }),
        ]
      })
    #expect(dup?.message.contains("more than once") == true)
    let unnamed = refusal(.with { $0.inputs = [input("", "FP32", [1], contents: .with { $0.fp32Contents = [1] })] })
    #expect(unnamed?.code == .invalidArgument)
  }

  @Test func boolRawMustBeZeroOrOne() {
    let e = refusal(
      .with {
        $0.inputs = [input("b", "BOOL", [2])]
        $0.rawInputContents = [Data([1, 7])]
      })
    #expect(e?.code == .invalidArgument)
  }

  @Test func refusalsNeverEchoData() {
    let e = refusal(
      .with {
        $0.inputs = [input("x", "FP32", [2], contents: .with { $0.fp32Contents = [123_456.75] })]
      })
    #expect(e?.message.contains("123456") == false)
  }
}
