public import PalisadeCore

/// Validate, part two: checks decoded inputs against the model's declared contract and puts them in
/// declaration order. Each declared input exactly once, nothing undeclared, the declared datatype, a shape that
/// matches (fixed dimensions equal, `-1` free), no zero-sized dimension unless the contract allows empty tensors,
/// and the manifest's ``ModelContract``: batch at most `max_batch`,
/// floats finite, values within each feature's declared range, BYTES elements bounded. Messages name the input,
/// the rule and at most a feature index: never a value.
public struct InputValidator: Sendable {
  public init() {}

  public func validate(_ tensors: [Tensor], against descriptor: ModelDescriptor) throws(PalisadeError) -> [Tensor] {
    var byName: [String: Tensor] = [:]
    for tensor in tensors { byName[tensor.name] = tensor }
    for tensor in tensors where !descriptor.inputs.contains(where: { $0.name == tensor.name }) {
      throw PalisadeError.invalidInput(tensor.name, "is not an input of model '\(descriptor.name.sanitizedForMessage)'")
    }
    var ordered: [Tensor] = []
    ordered.reserveCapacity(descriptor.inputs.count)
    for spec in descriptor.inputs {
      guard let tensor = byName[spec.name] else {
        throw PalisadeError.invalidInput(spec.name, "is required but missing")
      }
      guard tensor.datatype == spec.datatype else {
        throw PalisadeError.invalidInput(
          spec.name, "datatype \(tensor.datatype.rawValue) does not match the declared \(spec.datatype.rawValue)")
      }
      guard TensorShape.matches(tensor.shape, declared: spec.shape) else {
        throw PalisadeError.invalidInput(
          spec.name, "shape \(tensor.shape) does not match the declared \(spec.shape) (-1 = any size)")
      }
      try check(tensor, spec: spec, contract: descriptor.contract)
      ordered.append(tensor)
    }
    return ordered
  }

  func check(_ tensor: Tensor, spec: TensorSpec, contract: ModelContract) throws(PalisadeError) {
    if !contract.allowEmptyDimensions, tensor.shape.contains(0) {
      throw PalisadeError.invalidInput(
        spec.name, "shape \(tensor.shape) has a zero-sized dimension; this model does not accept empty tensors")
    }
    if let maxBatch = contract.maxBatch, spec.shape.first == -1, let batch = tensor.shape.first, batch > maxBatch {
      throw PalisadeError.invalidInput(spec.name, "batch \(batch) exceeds the model's max_batch \(maxBatch)")
    }
    if let elements = tensor.byteElements, elements.contains(where: { $0.count > contract.maxBytesElementLength }) {
      throw PalisadeError.invalidInput(
        spec.name, "a BYTES element is longer than \(contract.maxBytesElementLength) bytes")
    }
    if !contract.allowNonFinite, !tensor.allFinite {
      throw PalisadeError.invalidInput(spec.name, "NaN or infinite values are not accepted by this model")
    }
    // Only a declared range needs the values themselves.
    guard let range = contract.featureRanges[spec.name], let width = tensor.shape.last, width > 0,
      range.min.count == Int(width), range.max.count == Int(width), let values = tensor.floatingPointValues
    else { return }
    for (i, v) in values.enumerated() {
      let f = i % Int(width)
      if v < range.min[f] || v > range.max[f] {
        throw PalisadeError.invalidInput(spec.name, "feature \(f) is outside its declared range")
      }
    }
  }
}
