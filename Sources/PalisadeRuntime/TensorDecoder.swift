import Foundation
import PalisadeONNXProto

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Decodes `TensorProto`s and `AttributeProto`s from untrusted model files.
enum TensorDecoder {
  /// Decodes a tensor from raw_data, typed fields or external data, checking that the data matches the declared
  /// shape and type exactly. INT32 widens to INT64 and DOUBLE narrows to FLOAT.
  static func decode(
    _ t: Onnx_TensorProto, what: String, externalDataDirectory: URL?, limits: LoadLimits, budget: inout Int
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
    guard !o, bytes <= budget else { throw .limit("\(what): weights exceed the limit of \(limits.maxWeightBytes) bytes") }
    budget -= bytes
    let out = HostTensor(type: type, shape: shape)
    let dst = out.storage.raw

    func fromRaw(_ raw: UnsafeRawBufferPointer) throws(RuntimeError) {
      guard raw.count == bytes else {
        throw .shape("\(what) declares \(shape) (\(bytes) bytes of \(onnxTypeName(code))) but has \(raw.count) bytes of data")
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
        for i in 0..<count { dst.storeBytes(of: base.load(fromByteOffset: i, as: UInt8.self) != 0 ? 1 : 0, toByteOffset: i, as: UInt8.self) }
      default:
        dst.copyMemory(from: base, byteCount: bytes)
      }
    }

    if t.hasDataLocation && t.dataLocation == .external {
      let data = try readExternal(t, what: what, bytes: bytes, directory: externalDataDirectory)
      var failure: RuntimeError?
      data.withUnsafeBytes { raw in
        do { try fromRaw(raw) } catch { failure = (error as? RuntimeError) ?? .malformed("\(what): unreadable data") }
      }
      if let failure { throw failure }
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

  /// Reads `bytes` bytes of external data for `t`, refusing locations outside `directory`.
  static func readExternal(
    _ t: Onnx_TensorProto, what: String, bytes: Int, directory: URL?
  ) throws(RuntimeError) -> [UInt8] {
    guard let directory else {
      throw RuntimeError(.externalData, "\(what) uses external data, but no external-data directory was given")
    }
    var location: String?
    var offset = 0
    var length: Int?
    for entry in t.externalData {
      switch entry.key {
      case "location": location = entry.value
      case "offset":
        guard let v = Int(entry.value), v >= 0 else {
          throw RuntimeError(.externalData, "\(what): invalid external-data offset")
        }
        offset = v
      case "length":
        guard let v = Int(entry.value), v >= 0 else {
          throw RuntimeError(.externalData, "\(what): invalid external-data length")
        }
        length = v
      default: break  // checksum and future keys
      }
    }
    guard let location, !location.isEmpty else {
      throw RuntimeError(.externalData, "\(what): external data without a location")
    }
    let safeName = location.sanitizedForModelMessage
    // Only plain relative paths below the directory: no absolute paths, no '..', no empty or '.' components.
    let components = location.split(separator: "/", omittingEmptySubsequences: false)
    guard !location.hasPrefix("/"), !location.contains("\\"), !location.contains("\0"),
      components.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." })
    else {
      throw RuntimeError(.externalData, "\(what): external-data location '\(safeName)' is outside the model's directory")
    }
    if let length, length != bytes {
      throw RuntimeError(.shapeMismatch, "\(what): external-data length \(length) disagrees with its declared size \(bytes)")
    }
    // Resolve symlinks on both sides and require the file to stay inside the directory.
    guard let root = realPath(directory.path) else {
      throw RuntimeError(.externalData, "\(what): the external-data directory does not exist")
    }
    guard let resolved = realPath(root + "/" + location) else {
      throw RuntimeError(.externalData, "\(what): external-data file '\(safeName)' not found")
    }
    guard resolved.hasPrefix(root.hasSuffix("/") ? root : root + "/") else {
      throw RuntimeError(.externalData, "\(what): external-data file '\(safeName)' resolves outside the model's directory")
    }
    let fd = open(resolved, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
    guard fd >= 0 else { throw RuntimeError(.externalData, "\(what): cannot open external-data file '\(safeName)'") }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
      throw RuntimeError(.externalData, "\(what): external-data '\(safeName)' is not a regular file")
    }
    let size = Int(info.st_size)
    let (end, o) = offset.addingReportingOverflow(bytes)
    guard !o, end <= size else {
      throw RuntimeError(
        .externalData, "\(what): external data [\(offset), \(offset)+\(bytes)) lies beyond the end of '\(safeName)' (\(size) bytes)")
    }
    var buffer = [UInt8](repeating: 0, count: bytes)
    var done = 0
    while done < bytes {
      let n = buffer.withUnsafeMutableBytes { raw -> Int in
        guard let b = raw.baseAddress else { return -1 }
        return pread(fd, b + done, bytes - done, off_t(offset + done))
      }
      if n <= 0 { throw RuntimeError(.externalData, "\(what): short read from '\(safeName)'") }
      done += n
    }
    return buffer
  }

  static func realPath(_ path: String) -> String? {
    guard let p = realpath(path, nil) else { return nil }
    defer { free(p) }
    return String(cString: p)
  }

  static func attribute(
    _ a: Onnx_AttributeProto, node: String, externalDataDirectory: URL?, limits: LoadLimits, budget: inout Int
  ) throws(RuntimeError) -> Attribute {
    if !a.refAttrName.isEmpty {
      throw RuntimeError(.unsupported, "\(node.sanitizedForModelMessage): attribute references (functions)")
    }
    var type = a.type
    if !a.hasType {  // IR < 3 style: infer from the populated field
      if a.hasF { type = .float } else if a.hasI { type = .int } else if a.hasS { type = .string }
      else if a.hasT { type = .tensor } else if !a.ints.isEmpty { type = .ints } else if !a.floats.isEmpty { type = .floats }
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
          externalDataDirectory: externalDataDirectory, limits: limits, budget: &budget))
    default:
      return .other("\(type)")
    }
  }
}
