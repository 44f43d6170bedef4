import Foundation
import PalisadeCore
@testable import PalisadeRuntime

/// The committed fixtures (Tests/Fixtures, made by make_fixtures.py).
enum Fixtures {
  static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures")

  struct TensorFile: Decodable {
    var name: String
    var datatype: String
    var shape: [Int64]
    var file: String
  }
  struct Case: Decodable {
    var batch: Int
    var inputs: [TensorFile]
    var outputs: [TensorFile]
  }
  struct Model: Decodable {
    var model: String
    var files: [String]
    var cases: [Case]
  }
  struct Manifest: Decodable {
    var models: [Model]
  }

  static func manifest() throws -> Manifest {
    try JSONDecoder().decode(Manifest.self, from: Data(contentsOf: directory.appendingPathComponent("fixtures.json")))
  }

  static func bytes(_ name: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: directory.appendingPathComponent(name)))
  }

  static func tensor(_ f: TensorFile) throws -> Tensor {
    guard let type = DataType(wireName: f.datatype) else { throw FixtureError.badType(f.datatype) }
    return try Tensor(name: f.name, datatype: type, shape: f.shape, storage: .fixed(bytes(f.file)))
  }

  enum FixtureError: Error { case badType(String) }

  /// Largest violation of |ours - ref| <= atol + rtol * |ref| (0 when within tolerance), and whether types and
  /// shapes match.
  static func compare(_ ours: Tensor, _ ref: Tensor, rtol: Float = 1e-4, atol: Float = 1e-5) -> String? {
    guard ours.datatype == ref.datatype, ours.shape == ref.shape else {
      return "\(ours.name): got \(ours.datatype.rawValue)\(ours.shape), want \(ref.datatype.rawValue)\(ref.shape)"
    }
    switch ref.datatype {
    case .fp32:
      let (a, b) = (ours.values(as: Float.self) ?? [], ref.values(as: Float.self) ?? [])
      var worst: Float = 0
      var worstIndex = -1
      for i in 0..<min(a.count, b.count) {
        let excess = abs(a[i] - b[i]) - (atol + rtol * abs(b[i]))
        if !(excess <= 0) && (excess > worst || worstIndex < 0) {
          worst = excess
          worstIndex = i
        }
      }
      if worstIndex >= 0 {
        return "\(ours.name): element \(worstIndex) is \(a[worstIndex]), want \(b[worstIndex])"
      }
      return nil
    case .int64:
      return ours.values(as: Int64.self) == ref.values(as: Int64.self) ? nil : "\(ours.name): INT64 values differ"
    default:
      return ours.rawContents == ref.rawContents ? nil : "\(ours.name): values differ"
    }
  }
}
