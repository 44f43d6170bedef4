public import Foundation
import PalisadeCore
public import PalisadeProto
import PalisadeWire

/// Converts between the KServe v2 REST JSON shape of tensors (`{"name","datatype","shape","data"}`) and the gRPC
/// messages, for `palisade call infer`.
public enum JSONTensors {
  /// Why a JSON request cannot be turned into a call.
  public struct Error: Swift.Error, CustomStringConvertible {
    public let description: String
    init(_ d: String) { description = d }
  }

  /// Builds a request from `{"inputs": [...], "outputs": [{"name": ...}], "id": ...}`. With `raw`, inputs travel in
  /// `raw_input_contents` (FP16 and BF16 always do).
  public static func request(model: String, version: String, json: Data, raw: Bool) throws
    -> Inference_ModelInferRequest
  {
    guard let root = try JSONSerialization.jsonObject(with: json) as? [String: Any] else {
      throw Error("the request must be a JSON object with an \"inputs\" list")
    }
    guard let inputs = root["inputs"] as? [[String: Any]], !inputs.isEmpty else {
      throw Error("the request needs a non-empty \"inputs\" list")
    }
    var request = Inference_ModelInferRequest()
    request.modelName = model
    request.modelVersion = version
    if let id = root["id"] as? String { request.id = id }
    let tensors = try inputs.map(tensor)
    let useRaw = raw || tensors.contains { WireTensorEncoder.requiresRaw($0.datatype) }
    for t in tensors {
      var input = Inference_ModelInferRequest.InferInputTensor()
      input.name = t.name
      input.datatype = t.datatype.rawValue
      input.shape = t.shape
      if useRaw {
        request.rawInputContents.append(Data(t.rawContents))
      } else {
        input.contents = WireTensorEncoder.typedContents(t)
      }
      request.inputs.append(input)
    }
    for output in root["outputs"] as? [[String: Any]] ?? [] {
      guard let name = output["name"] as? String else { throw Error("each entry of \"outputs\" needs a \"name\"") }
      request.outputs.append(.with { $0.name = name })
    }
    return request
  }

  static func tensor(_ json: [String: Any]) throws -> Tensor {
    guard let name = json["name"] as? String else { throw Error("an input has no \"name\"") }
    guard let dt = json["datatype"] as? String, let datatype = DataType(wireName: dt) else {
      throw Error(
        "input '\(name)': \"datatype\" must be one of \(DataType.allCases.map(\.rawValue).joined(separator: ", "))")
    }
    guard let shape = (json["shape"] as? [Any])?.compactMap({ ($0 as? NSNumber)?.int64Value }) else {
      throw Error("input '\(name)': \"shape\" must be a list of integers")
    }
    let data = flatten(json["data"] ?? [])
    func numbers() throws -> [NSNumber] {
      try data.map {
        guard let n = $0 as? NSNumber else { throw Error("input '\(name)': \"data\" must hold numbers") }
        return n
      }
    }
    // Integers must fit their type exactly: 300 is not an INT8 and 1.5 is not an INT32 (NSNumber's accessors
    // would silently wrap or truncate them).
    func integers<T: FixedWidthInteger>(_: T.Type) throws -> [T] {
      try numbers().map { n in
        if let v = T(n.stringValue) ?? T(exactly: n.doubleValue) { return v }
        throw Error("input '\(name)': \(n) is not a \(datatype.rawValue) value")
      }
    }
    switch datatype {
    case .bytes:
      let elements = try data.map { v -> [UInt8] in
        guard let s = v as? String else { throw Error("input '\(name)': BYTES data must be strings") }
        return Array(s.utf8)
      }
      return try Tensor(name: name, datatype: .bytes, shape: shape, storage: .bytes(elements))
    case .bool:
      return try Tensor(
        name: name, datatype: .bool, shape: shape, storage: .fixed(try numbers().map { $0.boolValue ? 1 : 0 }))
    case .fp16:
      let bits = try numbers().map { Half.bits(from: $0.floatValue) }
      return try Tensor(name: name, datatype: .fp16, shape: shape, storage: .fixed(bytes(of: bits)))
    case .bf16:
      let bits = try numbers().map { UInt16(truncatingIfNeeded: $0.floatValue.bitPattern >> 16) }
      return try Tensor(name: name, datatype: .bf16, shape: shape, storage: .fixed(bytes(of: bits)))
    case .fp32: return try Tensor(name: name, shape: shape, values: try numbers().map(\.floatValue))
    case .fp64: return try Tensor(name: name, shape: shape, values: try numbers().map(\.doubleValue))
    case .int8: return try Tensor(name: name, shape: shape, values: try integers(Int8.self))
    case .int16: return try Tensor(name: name, shape: shape, values: try integers(Int16.self))
    case .int32: return try Tensor(name: name, shape: shape, values: try integers(Int32.self))
    case .int64: return try Tensor(name: name, shape: shape, values: try integers(Int64.self))
    case .uint8: return try Tensor(name: name, shape: shape, values: try integers(UInt8.self))
    case .uint16: return try Tensor(name: name, shape: shape, values: try integers(UInt16.self))
    case .uint32: return try Tensor(name: name, shape: shape, values: try integers(UInt32.self))
    case .uint64: return try Tensor(name: name, shape: shape, values: try integers(UInt64.self))
    }
  }

  static func bytes(of bits: [UInt16]) -> [UInt8] {
    bits.flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
  }

  static func flatten(_ value: Any) -> [Any] {
    if let list = value as? [Any] { return list.flatMap(flatten) }
    return [value]
  }

  /// The response as KServe v2 REST JSON.
  public static func json(_ response: Inference_ModelInferResponse) throws -> Data {
    var outputs: [[String: Any]] = []
    for (i, out) in response.outputs.enumerated() {
      var data: [Any] = []
      let c = out.contents
      if i < response.rawOutputContents.count, let dt = DataType(wireName: out.datatype) {
        data = decodeRaw(response.rawOutputContents[i], dt)
      } else {
        data =
          c.boolContents.map { $0 as Any } + c.intContents.map { $0 as Any } + c.int64Contents.map { $0 as Any }
          + c.uintContents.map { $0 as Any } + c.uint64Contents.map { $0 as Any } + c.fp32Contents.map { $0 as Any }
          + c.fp64Contents.map { $0 as Any } + c.bytesContents.map { String(decoding: $0, as: UTF8.self) as Any }
      }
      outputs.append(["name": out.name, "datatype": out.datatype, "shape": out.shape, "data": data])
    }
    let root: [String: Any] = [
      "model_name": response.modelName, "model_version": response.modelVersion, "id": response.id, "outputs": outputs,
    ]
    return try JSONSerialization.data(withJSONObject: root, options: [.sortedKeys])
  }

  static func decodeRaw(_ raw: Data, _ dt: DataType) -> [Any] {
    let bytes = [UInt8](raw)
    func read<T: TensorScalar>(_: T.Type) -> [Any] {
      (try? Tensor(name: "", datatype: dt, shape: [Int64(bytes.count / MemoryLayout<T>.size)], storage: .fixed(bytes)))?
        .values(as: T.self)?.map { $0 as Any } ?? []
    }
    switch dt {
    case .fp32: return read(Float.self)
    case .fp64: return read(Double.self)
    case .int8: return read(Int8.self)
    case .int16: return read(Int16.self)
    case .int32: return read(Int32.self)
    case .int64: return read(Int64.self)
    case .uint8: return read(UInt8.self)
    case .uint16: return read(UInt16.self)
    case .uint32: return read(UInt32.self)
    case .uint64: return read(UInt64.self)
    case .bool: return bytes.map { ($0 != 0) as Any }
    case .fp16:
      return Half.floats(littleEndian: bytes).map { $0 as Any }
    case .bf16:
      return stride(from: 0, to: bytes.count - 1, by: 2).map {
        Float(bitPattern: (UInt32(bytes[$0]) | UInt32(bytes[$0 + 1]) << 8) << 16) as Any
      }
    case .bytes:
      var out: [Any] = []
      var i = 0
      while i + 4 <= bytes.count {
        let n = Int(
          UInt32(bytes[i]) | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2]) << 16 | UInt32(bytes[i + 3]) << 24)
        i += 4
        guard i + n <= bytes.count else { break }
        out.append(String(decoding: bytes[i..<(i + n)], as: UTF8.self))
        i += n
      }
      return out
    }
  }
}
