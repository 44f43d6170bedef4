public import PalisadeCore

/// Element types the runtime computes with. INT32 / DOUBLE initializers are widened to INT64 / FLOAT at load.
public enum ElementType: Sendable, Hashable, CustomStringConvertible {
  case float32, int64, bool

  var size: Int {
    switch self {
    case .float32: 4
    case .int64: 8
    case .bool: 1
    }
  }

  /// The ONNX `TensorProto.DataType` code.
  var onnxCode: Int32 {
    switch self {
    case .float32: 1
    case .int64: 7
    case .bool: 9
    }
  }

  init?(onnxCode: Int32) {
    switch onnxCode {
    case 1: self = .float32
    case 7: self = .int64
    case 9: self = .bool
    default: return nil
    }
  }

  /// The Open Inference Protocol datatype.
  public var dataType: DataType {
    switch self {
    case .float32: .fp32
    case .int64: .int64
    case .bool: .bool
    }
  }

  public var description: String {
    switch self {
    case .float32: "FLOAT"
    case .int64: "INT64"
    case .bool: "BOOL"
    }
  }
}

/// The name of an ONNX datatype code, for error messages.
func onnxTypeName(_ code: Int32) -> String {
  let names = [
    0: "UNDEFINED", 1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64",
    8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 14: "COMPLEX64",
    15: "COMPLEX128", 16: "BFLOAT16",
  ]
  return names[Int(code)] ?? "type \(code)"
}

/// 64-byte aligned, immutable-after-construction tensor memory (weights, folded constants).
final class TensorStorage: @unchecked Sendable {
  let raw: UnsafeMutableRawPointer
  let byteCount: Int

  init(byteCount: Int) {
    self.byteCount = byteCount
    raw = .allocate(byteCount: max(byteCount, 64), alignment: 64)
    raw.initializeMemory(as: UInt8.self, repeating: 0, count: max(byteCount, 64))
  }

  deinit { raw.deallocate() }
}

/// A constant tensor held by the runtime.
struct HostTensor: Sendable {
  var type: ElementType
  var shape: [Int]
  var storage: TensorStorage

  var count: Int { type.size == 0 ? 0 : storage.byteCount / type.size }

  init(type: ElementType, shape: [Int], storage: TensorStorage) {
    self.type = type
    self.shape = shape
    self.storage = storage
  }

  /// A zero-filled tensor. `shape` must already be validated.
  init(type: ElementType, shape: [Int]) {
    var n = 1
    for d in shape { n *= d }
    self.init(type: type, shape: shape, storage: TensorStorage(byteCount: n * type.size))
  }

  static func floats(_ values: [Float], shape: [Int]) -> HostTensor {
    let t = HostTensor(type: .float32, shape: shape)
    values.withUnsafeBytes {
      if let b = $0.baseAddress, $0.count > 0 { t.storage.raw.copyMemory(from: b, byteCount: $0.count) }
    }
    return t
  }

  static func int64s(_ values: [Int64], shape: [Int]) -> HostTensor {
    let t = HostTensor(type: .int64, shape: shape)
    do {
      values.withUnsafeBytes {
        if let b = $0.baseAddress, $0.count > 0 { t.storage.raw.copyMemory(from: b, byteCount: $0.count) }
      }
    }
    return t
  }

  var floatPointer: UnsafeMutablePointer<Float> { storage.raw.assumingMemoryBound(to: Float.self) }
  var int64Pointer: UnsafeMutablePointer<Int64> { storage.raw.assumingMemoryBound(to: Int64.self) }
  var boolPointer: UnsafeMutablePointer<UInt8> { storage.raw.assumingMemoryBound(to: UInt8.self) }

  /// The values as Int64 (int64 and bool tensors; floats truncated), for shape-like constant inputs.
  var int64Values: [Int64] {
    let n = count
    switch type {
    case .int64: return Array(UnsafeBufferPointer(start: int64Pointer, count: n))
    case .bool: return (0..<n).map { Int64(boolPointer[$0]) }
    case .float32:
      return (0..<n).map { i in
        let v = floatPointer[i]
        return v.isFinite && abs(v) < 9e18 ? Int64(v) : 0
      }
    }
  }

  var floatValues: [Float] {
    switch type {
    case .float32: return Array(UnsafeBufferPointer(start: floatPointer, count: count))
    case .int64: return int64Values.map { Float($0) }
    case .bool: return int64Values.map { Float($0) }
    }
  }
}
