import Foundation
public import PalisadeCore
public import PalisadeProto

/// Validate, part one: turns the wire form of a request's inputs into ``Tensor``s, enforcing the protocol's own
/// rules before anything looks at a model.
///
/// Every rule failure is INVALID_ARGUMENT naming the input and the rule, never its data. Arithmetic on
/// caller-supplied shapes and lengths is overflow-checked.
public enum WireTensorDecoder {
  /// Decodes `request.inputs` with either `raw_input_contents` or typed `contents`, never both.
  public static func decode(_ request: Inference_ModelInferRequest) throws(PalisadeError) -> [Tensor] {
    let raw = request.rawInputContents
    let usesRaw = !raw.isEmpty
    if usesRaw && raw.count != request.inputs.count {
      throw PalisadeError(
        .invalidArgument,
        "raw_input_contents has \(raw.count) entries for \(request.inputs.count) inputs; there must be one per input")
    }
    var seen = Set<String>()
    var tensors: [Tensor] = []
    tensors.reserveCapacity(request.inputs.count)
    for (index, input) in request.inputs.enumerated() {
      let name = input.name
      guard !name.isEmpty else { throw PalisadeError(.invalidArgument, "input #\(index) has no name") }
      guard seen.insert(name).inserted else { throw PalisadeError.invalidInput(name, "appears more than once") }
      guard let datatype = DataType(wireName: input.datatype) else {
        throw PalisadeError.invalidInput(name, "unknown datatype '\(input.datatype.sanitizedForMessage)'")
      }
      guard let count = TensorShape.elementCount(input.shape) else {
        throw PalisadeError.invalidInput(name, "shape has a negative dimension or its element count overflows")
      }
      if usesRaw {
        if input.hasContents {
          throw PalisadeError.invalidInput(
            name, "typed contents and raw_input_contents are mixed; use one form for all inputs")
        }
        tensors.append(try decodeRaw(name: name, datatype: datatype, shape: input.shape, count: count, raw[index]))
      } else {
        tensors.append(try decodeTyped(name: name, datatype: datatype, shape: input.shape, count: count, input))
      }
    }
    return tensors
  }

  static func decodeRaw(name: String, datatype: DataType, shape: [Int64], count: Int, _ data: Data)
    throws(PalisadeError) -> Tensor
  {
    if let width = datatype.elementSize {
      guard let expected = TensorShape.byteCount(elements: count, of: datatype) else {
        throw PalisadeError.invalidInput(name, "byte size of shape overflows")
      }
      guard data.count == expected else {
        throw PalisadeError.invalidInput(
          name,
          "raw contents hold \(data.count) bytes, shape and \(datatype.rawValue) (\(width) bytes each) need \(expected)"
        )
      }
      if datatype == .bool, data.contains(where: { $0 > 1 }) {
        throw PalisadeError.invalidInput(name, "BOOL raw contents must be 0 or 1 per byte")
      }
      return try Tensor(name: name, datatype: datatype, shape: shape, storage: .fixed([UInt8](data)))
    }
    // BYTES: each element is a 4-byte little-endian length followed by that many bytes.
    var elements: [[UInt8]] = []
    elements.reserveCapacity(min(count, data.count / 4))
    var offset = data.startIndex
    while offset < data.endIndex {
      guard data.endIndex - offset >= 4 else {
        throw PalisadeError.invalidInput(name, "BYTES raw contents end inside an element's length prefix")
      }
      var length: UInt32 = 0
      for i in 0..<4 { length |= UInt32(data[offset + i]) << (8 * UInt32(i)) }
      offset += 4
      guard let size = Int(exactly: length), size <= data.endIndex - offset else {
        throw PalisadeError.invalidInput(name, "BYTES element #\(elements.count) is longer than the remaining contents")
      }
      guard elements.count < count else {
        throw PalisadeError.invalidInput(name, "BYTES raw contents hold more than the \(count) elements of its shape")
      }
      elements.append([UInt8](data[offset..<(offset + size)]))
      offset += size
    }
    guard elements.count == count else {
      throw PalisadeError.invalidInput(name, "BYTES raw contents hold \(elements.count) elements, shape needs \(count)")
    }
    return try Tensor(name: name, datatype: .bytes, shape: shape, storage: .bytes(elements))
  }

  static func decodeTyped(
    name: String, datatype: DataType, shape: [Int64], count: Int,
    _ input: Inference_ModelInferRequest.InferInputTensor
  ) throws(PalisadeError) -> Tensor {
    let c = input.contents
    let populated = [
      ("bool_contents", c.boolContents.count), ("int_contents", c.intContents.count),
      ("int64_contents", c.int64Contents.count), ("uint_contents", c.uintContents.count),
      ("uint64_contents", c.uint64Contents.count), ("fp32_contents", c.fp32Contents.count),
      ("fp64_contents", c.fp64Contents.count), ("bytes_contents", c.bytesContents.count),
    ].filter { $0.1 > 0 }
    let field: String
    switch datatype {
    case .bool: field = "bool_contents"
    case .int8, .int16, .int32: field = "int_contents"
    case .int64: field = "int64_contents"
    case .uint8, .uint16, .uint32: field = "uint_contents"
    case .uint64: field = "uint64_contents"
    case .fp32: field = "fp32_contents"
    case .fp64: field = "fp64_contents"
    case .bytes: field = "bytes_contents"
    case .fp16, .bf16:
      if count == 0 && populated.isEmpty {
        return try Tensor(name: name, datatype: datatype, shape: shape, storage: .fixed([]))
      }
      throw PalisadeError.invalidInput(
        name, "\(datatype.rawValue) has no typed contents field; send raw_input_contents")
    }
    if let other = populated.first(where: { $0.0 != field }) {
      throw PalisadeError.invalidInput(name, "\(datatype.rawValue) data must be in \(field), not \(other.0)")
    }
    let provided = populated.first?.1 ?? 0
    guard provided == count else {
      throw PalisadeError.invalidInput(
        name, "\(field) holds \(provided) elements, shape needs \(count)")
    }
    func narrow<Wide: BinaryInteger, T: TensorScalar & FixedWidthInteger>(_ values: [Wide], _: T.Type)
      throws(PalisadeError) -> Tensor
    {
      var out: [T] = []
      out.reserveCapacity(values.count)
      for v in values {
        guard let x = T(exactly: v) else {
          throw PalisadeError.invalidInput(name, "a value is out of range for \(datatype.rawValue)")
        }
        out.append(x)
      }
      return try Tensor(name: name, shape: shape, values: out)
    }
    switch datatype {
    case .bool:
      return try Tensor(
        name: name, datatype: .bool, shape: shape, storage: .fixed(c.boolContents.map { $0 ? 1 : 0 }))
    case .int8: return try narrow(c.intContents, Int8.self)
    case .int16: return try narrow(c.intContents, Int16.self)
    case .int32: return try Tensor(name: name, shape: shape, values: c.intContents)
    case .int64: return try Tensor(name: name, shape: shape, values: c.int64Contents)
    case .uint8: return try narrow(c.uintContents, UInt8.self)
    case .uint16: return try narrow(c.uintContents, UInt16.self)
    case .uint32: return try Tensor(name: name, shape: shape, values: c.uintContents)
    case .uint64: return try Tensor(name: name, shape: shape, values: c.uint64Contents)
    case .fp32: return try Tensor(name: name, shape: shape, values: c.fp32Contents)
    case .fp64: return try Tensor(name: name, shape: shape, values: c.fp64Contents)
    case .bytes:
      return try Tensor(
        name: name, datatype: .bytes, shape: shape, storage: .bytes(c.bytesContents.map { [UInt8]($0) }))
    case .fp16, .bf16:
      throw PalisadeError.invalidInput(name, "\(datatype.rawValue) has no typed contents field")
    }
  }
}
