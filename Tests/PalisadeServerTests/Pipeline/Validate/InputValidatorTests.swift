import PalisadeCore
import Testing

@testable import PalisadeServer

/// Stage 5 against a manifest's contract.
@Suite struct InputValidatorTests {
  let descriptor = ModelDescriptor(
    name: "m", version: "1", platform: "t",
    inputs: [
      TensorSpec(name: "x", datatype: .fp32, shape: [-1, 3]), TensorSpec(name: "s", datatype: .bytes, shape: [-1]),
    ],
    outputs: [],
    contract: ModelContract(
      maxBatch: 4, featureRanges: ["x": .init(min: [0, -1, 0], max: [1, 1, 100])], allowNonFinite: false,
      maxBytesElementLength: 8))

  func validate(_ x: [Float], rows: Int64, s: [[UInt8]] = [[1]]) throws(PalisadeError) -> [Tensor] {
    try InputValidator().validate(
      [
        try Tensor(name: "x", shape: [rows, 3], values: x),
        try Tensor(name: "s", datatype: .bytes, shape: [Int64(s.count)], storage: .bytes(s)),
      ], against: descriptor)
  }

  func refusal(_ body: () throws -> Void) -> PalisadeError? {
    do {
      try body()
      return nil
    } catch { return error as? PalisadeError }
  }

  @Test func acceptsWhatTheContractAllows() throws {
    #expect(try validate([0, -1, 50, 1, 1, 100], rows: 2).count == 2)
  }

  @Test func refusesEachBrokenRule() {
    let cases: [(String, () throws -> Void)] = [
      ("outside its declared range", { _ = try validate([0, 0, 101], rows: 1) }),
      ("outside its declared range", { _ = try validate([-0.5, 0, 1], rows: 1) }),
      ("NaN or infinite", { _ = try validate([Float.nan, 0, 1], rows: 1) }),
      ("NaN or infinite", { _ = try validate([0, Float.infinity, 1], rows: 1) }),
      ("max_batch 4", { _ = try validate(Array(repeating: 0, count: 15), rows: 5) }),
      ("BYTES element is longer", { _ = try validate([0, 0, 0], rows: 1, s: [Array(repeating: 7, count: 9)]) }),
    ]
    for (rule, body) in cases {
      let e = refusal(body)
      #expect(e?.code == .invalidArgument, "\(rule)")
      #expect(e?.message.contains(rule) == true, "\(e?.message ?? "accepted") for \(rule)")
      #expect(e?.message.contains("101") == false && e?.message.contains("nan") == false)
    }
  }

  @Test func unconstrainedModelsAcceptNonFinite() throws {
    let open = ModelDescriptor(
      name: "m", version: "1", platform: "t", inputs: [TensorSpec(name: "x", datatype: .fp32, shape: [-1])], outputs: []
    )
    _ = try InputValidator().validate([try Tensor(name: "x", shape: [1], values: [Float.nan])], against: open)
  }
}
