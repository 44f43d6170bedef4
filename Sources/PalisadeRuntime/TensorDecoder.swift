import Foundation
import PalisadeCore
import PalisadeONNXProto

/// Decodes `TensorProto`s and `AttributeProto`s from untrusted model files.
enum TensorDecoder {
  /// Decodes a tensor from raw_data, typed fields or external data, checking that the data matches the declared
  /// shape and type exactly. INT32 widens to INT64 and DOUBLE narrows to FLOAT.
  static func decode(
    _ t: Onnx_TensorProto, what: String, externalData: ExternalData?, limits: LoadLimits, budget: inout Int
  ) throws(RuntimeError) -> HostTensor {
    let code = t.dataType
    let sourceSize: Int
    let type: ElementType
    switch code {
    case 1: (type, sourceSize) = (.float32, 4)
    case 7: (type, sourceSize) = (.int64, 8)
    case 9: (type, sourceSize) = (.bool, 1)
    case 6: (type, sourceSize) = (.int64, 4)
    case 11: (type, sourceSize) = (.float32, 8)
    default: throw RuntimeError(.unsupported, "datatype \(onnxTypeName(code)) of \(what)")
    }
    if t.hasSegment { throw RuntimeError(.unsupported, "segmented tensor \(what)") }
    guard t.dims.count <= 8 else { throw .limit("\(what) has rank \(t.dims.count) (at most 8)") }
    var shape: [Int] = []
    for d in t.dims {
      guard d >= 0 else { throw .shape("\(what) has a negative dimension \(d)") }
      guard let i = Int(exactly: d) else { throw .limit("\(what): dimension \(d) out of range") }
      shape.append(i)
    }
    let count = try checkedCount(shape, limit: limits.maxTensorElements, what: what)
    let (bytes, o) = count.multipliedReportingOverflow(by: sourceSize)
    guard !o, bytes <= budget else {
      throw .limit("\(what): weights exceed the limit of \(limits.maxWeightBytes) bytes")
    }
    budget -= bytes
    let out = HostTensor(type: type, shape: shape)
    let dst = out.storage.raw

    func fromRaw(_ raw: UnsafeRawBufferPointer) throws(RuntimeError) {
      guard raw.count == bytes else {
        throw .shape(
          "\(what) declares \(shape) (\(bytes) bytes of \(onnxTypeName(code))) but has \(raw.count) bytes of data")
      }
      guard count > 0, let base = raw.baseAddress else { return }
      switch code {
      case 6:
        for i in 0..<count {
          let v = base.loadUnaligned(fromByteOffset: i * 4, as: Int32.self)
          dst.storeBytes(of: Int64(Int32(littleEndian: v)), toByteOffset: i * 8, as: Int64.self)
        }
      case 11:
        for i in 0..<count {
          let v = base.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
          dst.storeBytes(of: Float(Double(bitPattern: UInt64(littleEndian: v))), toByteOffset: i * 4, as: Float.self)
        }
      case 9:
        for i in 0..<count {
          dst.storeBytes(of: base.load(fromByteOffset: i, as: UInt8.self) != 0 ? 1 : 0, toByteOffset: i, as: UInt8.self)
        }
      default:
        dst.copyMemory(from: base, byteCount: bytes)
      }
    }

    if t.hasDataLocation && t.dataLocation == .external {
      let (file, range) = try externalRange(t, what: what, bytes: bytes, files: externalData)
      try file.withBytes { (raw: UnsafeRawBufferPointer) throws(RuntimeError) in
        try fromRaw(UnsafeRawBufferPointer(rebasing: raw[range]))
      }
      return out
    }
    if t.hasRawData {
      var failure: RuntimeError?
      t.rawData.withUnsafeBytes { raw in
        do { try fromRaw(raw) } catch { failure = (error as? RuntimeError) ?? .malformed("\(what): unreadable data") }
      }
      if let failure { throw failure }
      return out
    }
    func typedCount(_ n: Int, _ field: String) throws(RuntimeError) {
      guard n == count else {
        throw .shape("\(what) declares \(shape) (\(count) elements) but \(field) has \(n) values")
      }
    }
    switch code {
    case 1:
      try typedCount(t.floatData.count, "float_data")
      t.floatData.withUnsafeBytes { if let b = $0.baseAddress { dst.copyMemory(from: b, byteCount: $0.count) } }
    case 7:
      try typedCount(t.int64Data.count, "int64_data")
      t.int64Data.withUnsafeBytes { if let b = $0.baseAddress { dst.copyMemory(from: b, byteCount: $0.count) } }
    case 6, 9:
      try typedCount(t.int32Data.count, "int32_data")
      for (i, v) in t.int32Data.enumerated() {
        if code == 6 { out.int64Pointer[i] = Int64(v) } else { out.boolPointer[i] = v != 0 ? 1 : 0 }
      }
    case 11:
      try typedCount(t.doubleData.count, "double_data")
      for (i, v) in t.doubleData.enumerated() { out.floatPointer[i] = Float(v) }
    default:
      break
    }
    return out
  }

  /// Finds the external data of `t` among the bundle's verified files: the file named by its `location` and the
  /// `bytes`-long range at its `offset`. Nothing is read from disk: a location that is not a verified file of the
  /// bundle (below the model file's directory) is refused, whatever exists on disk.
  static func externalRange(
    _ t: Onnx_TensorProto, what: String, bytes: Int, files: ExternalData?
  ) throws(RuntimeError) -> (any ModelFileBytes, Range<Int>) {
    guard let files else {
      throw RuntimeError(.externalData, "\(what) uses external data, but the model was given no external-data files")
    }
    var location: String?
    var offset = 0
    var length: Int?
    for entry in t.externalData {
      switch entry.key {
      case "location": location = entry.value
      case "offset":
        // A decimal string: Int(_:) refuses signs other than '-', non-digits and values beyond Int.
        guard let v = Int(entry.value), v >= 0 else {
          throw RuntimeError(
            .externalData, "\(what): invalid external-data offset (a non-negative integer is required)")
        }
        offset = v
      case "length":
        guard let v = Int(entry.value), v >= 0 else {
          throw RuntimeError(
            .externalData, "\(what): invalid external-data length (a non-negative integer is required)")
        }
        length = v
      default: break  // checksum and future keys
      }
    }
    guard let location, !location.isEmpty else {
      throw RuntimeError(.externalData, "\(what): external data without a location")
    }
    let safeName = location.sanitizedForModelMessage
    // Only plain relative paths below the model's directory: no absolute paths, no '..', no empty or '.' components
    // (so that the location is the one spelling of a verified file's name).
    let components = location.split(separator: "/", omittingEmptySubsequences: false)
    guard !location.hasPrefix("/"), !location.contains("\\"), !location.contains("\0"),
      components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." })
    else {
      throw RuntimeError(
        .externalData, "\(what): external-data location '\(safeName)' is outside the model's directory")
    }
    if let length, length != bytes {
      throw RuntimeError(
        .shapeMismatch, "\(what): external-data length \(length) disagrees with its declared size \(bytes)")
    }
    guard let file = files[location] else {
      throw RuntimeError(
        .externalData, "\(what): external-data file '\(safeName)' is not among the bundle's verified files")
    }
    let size = file.count
    let (end, o) = offset.addingReportingOverflow(bytes)
    guard !o, end <= size else {
      throw RuntimeError(
        .externalData,
        "\(what): external data [\(offset), \(offset)+\(bytes)) lies beyond the end of '\(safeName)' (\(size) bytes)")
    }
    return (file, offset..<end)
  }

  static func attribute(
    _ a: Onnx_AttributeProto, node: String, externalData: ExternalData?, limits: LoadLimits, budget: inout Int
  ) throws(RuntimeError) -> Attribute {
    if !a.refAttrName.isEmpty {
      throw RuntimeError(.unsupported, "\(node.sanitizedForModelMessage): attribute references (functions)")
    }
    var type = a.type
    if !a.hasType {  // IR < 3 style: infer from the populated field
      if a.hasF {
        type = .float
      } else if a.hasI {
        type = .int
      } else if a.hasS {
        type = .string
      } else if a.hasT {
        type = .tensor
      } else if !a.ints.isEmpty {
        type = .ints
      } else if !a.floats.isEmpty {
        type = .floats
      }
    }
    switch type {
    case .int: return .int(a.i)
    case .float: return .float(a.f)
    case .ints: return .ints(a.ints)
    case .floats: return .floats(a.floats)
    case .string: return .string(String(decoding: a.s, as: UTF8.self))
    case .tensor:
      return .tensor(
        try decode(
          a.t, what: "attribute '\(a.name.sanitizedForModelMessage)' of \(node.sanitizedForModelMessage)",
          externalData: externalData, limits: limits, budget: &budget))
    default:
      return .other("\(type)")
    }
  }
}
