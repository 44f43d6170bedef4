public import PalisadeCore

/// Validate, part two: checks decoded inputs against the model's declared contract and puts them in
/// declaration order. Each declared input exactly once, nothing undeclared, the declared datatype, and a shape
/// that matches (fixed dimensions equal, `-1` free).
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
      guard let tensor = byName[spec.name] else { throw PalisadeError.invalidInput(spec.name, "is required but missing") }
      guard tensor.datatype == spec.datatype else {
        throw PalisadeError.invalidInput(
          spec.name, "datatype \(tensor.datatype.rawValue) does not match the declared \(spec.datatype.rawValue)")
      }
      guard TensorShape.matches(tensor.shape, declared: spec.shape) else {
        throw PalisadeError.invalidInput(
          spec.name, "shape \(tensor.shape) does not match the declared \(spec.shape) (-1 = any size)")
      }
      ordered.append(tensor)
    }
    return ordered
  }
}
