import Foundation
import PalisadeCore
import PalisadeKernels
import PalisadeONNXProto
import Testing
@testable import PalisadeRuntime

/// The per-operator fixtures (Tests/Fixtures/ops, made by make_op_fixtures.py): one tiny model per case, its
/// inputs and onnxruntime's outputs inline.
enum OperatorFixtures {
  struct TensorValues: Decodable {
    var name: String
    var datatype: String
    var shape: [Int64]
    var values: [Double]

    func tensor() throws -> Tensor {
      guard let type = DataType(wireName: datatype) else { throw Fixtures.FixtureError.badType(datatype) }
      var bytes: [UInt8] = []
      for v in values {
        switch type {
        case .fp32: withUnsafeBytes(of: Float(v).bitPattern.littleEndian) { bytes += $0 }
        case .int64: withUnsafeBytes(of: Int64(v).littleEndian) { bytes += $0 }
        default: bytes.append(v != 0 ? 1 : 0)
        }
      }
      return try Tensor(name: name, datatype: type, shape: shape, storage: .fixed(bytes))
    }
  }
  struct Case: Decodable, CustomTestStringConvertible {
    var name: String
    var model: String
    var inputs: [TensorValues]
    var outputs: [TensorValues]
    var testDescription: String { name }
  }
  struct File: Decodable { var cases: [Case] }

  static let cases: [Case] = {
    let url = Fixtures.directory.appendingPathComponent("ops/cases.json")
    return (try? JSONDecoder().decode(File.self, from: Data(contentsOf: url)).cases) ?? []
  }()
}

@Suite("Operators: each one against onnxruntime, and the registry covered by fixtures")
struct OperatorTests {
  @Test("one operator model matches onnxruntime within 1e-4 rel / 1e-5 abs", arguments: OperatorFixtures.cases)
  func matchesOnnxruntime(_ c: OperatorFixtures.Case) throws {
    let model = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent(c.model))
    let inputs = try c.inputs.map { try $0.tensor() }
    let expected = try c.outputs.map { try $0.tensor() }
    for pool in [nil, WorkerPool.shared] {
      let outputs = try model.predict(inputs, pool: pool)
      #expect(outputs.map(\.name) == expected.map(\.name))
      for (ours, ref) in zip(outputs, expected) {
        let problem = Fixtures.compare(ours, ref)
        #expect(problem == nil, "\(c.name): \(problem ?? "")")
      }
    }
  }

  /// Every operator a model file may use appears in a fixture model that is compared with onnxruntime (the
  /// per-operator cases, or the exported reference models of FixtureTests).
  @Test func everyRegisteredOperatorIsExercised() throws {
    #expect(OperatorFixtures.cases.count >= 50, "Tests/Fixtures/ops/cases.json is missing or short")
    var files = Set(OperatorFixtures.cases.map(\.model))
    files.formUnion(FixtureTests.modelNames)
    var covered = Set<String>()
    for file in files {
      let model = try ONNXModel.load(contentsOf: Fixtures.directory.appendingPathComponent(file))
      for node in model.nodes {
        covered.insert(node.domain.isEmpty ? node.opType : "\(node.domain).\(node.opType)")
      }
    }
    let missing = OperatorRegistry.supported.filter { !covered.contains($0) }
    #expect(
      missing.isEmpty,
      "registered operators without an onnxruntime fixture (add a case to Tests/Fixtures/make_op_fixtures.py): \(missing)"
    )
    // And the fixtures use nothing the registry does not list.
    #expect(covered.subtracting(OperatorRegistry.supported).isEmpty)
  }

  @Test func registryNamesAreUnique() {
    let names = OperatorRegistry.all.map(\.qualifiedName)
    #expect(Set(names).count == names.count, "an operator is registered twice")
    #expect(OperatorRegistry.all.filter(\.isInternal).allSatisfy { $0.opType.hasPrefix("_") })
    #expect(!OperatorRegistry.isSupported(domain: "", opType: "_Dense"))
    #expect(OperatorRegistry.isSupported(domain: "ai.onnx.ml", opType: "ArrayFeatureExtractor"))
    #expect(!OperatorRegistry.isSupported(domain: "", opType: "ArrayFeatureExtractor"))
  }

  /// The planner's fusion decisions travel in `_`-prefixed attributes: a file that sets them is refused.
  @Test func reservedAttributesAreRefused() throws {
    var node = Build.node("Conv", ["x", "w"], ["y"])
    var a = Onnx_AttributeProto()
    a.name = "_activation"
    a.type = .string
    a.s = Data("Relu".utf8)
    node.attribute.append(a)
    let bytes = try Build.model(
      nodes: [node], inputs: [Build.value("x", 1, [1, 1, 4, 4])], outputs: [Build.value("y", 1, [1, 1, 2, 2])],
      initializers: [Build.floats("w", [1, 1, 3, 3], [Float](repeating: 1, count: 9))])
    let error = try #require(Build.loadError(bytes))
    #expect(error.kind == .unsupported)
    #expect(error.message.contains("reserved for the runtime"), "\(error.message)")
  }
}
