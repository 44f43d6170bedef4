import Foundation
public import PalisadeCore
public import PalisadeProto
import PalisadeWire

/// Builds the wire response: only the outputs the caller asked for (all declared outputs when it asked for
/// none), raw contents when the request used raw inputs or when a datatype has no typed field (FP16, BF16),
/// typed contents otherwise.
public struct ResponseEncoder: Sendable {
  public init() {}

  /// The requested output names, checked against the declaration; `nil` means all.
  public func requestedOutputs(_ request: Inference_ModelInferRequest, descriptor: ModelDescriptor)
    throws(PalisadeError) -> [String]?
  {
    guard !request.outputs.isEmpty else { return nil }
    var names: [String] = []
    for output in request.outputs {
      guard descriptor.outputs.contains(where: { $0.name == output.name }) else {
        throw PalisadeError(
          .invalidArgument,
          "requested output '\(output.name.sanitizedForMessage)' is not an output of model '\(descriptor.name.sanitizedForMessage)'"
        )
      }
      if !names.contains(output.name) { names.append(output.name) }
    }
    return names
  }

  /// The outputs the caller asked for (all declared ones when it asked for none), in that order.
  public func select(_ outputs: [Tensor], requested: [String]?, descriptor: ModelDescriptor) throws(PalisadeError)
    -> [Tensor]
  {
    let order = requested ?? descriptor.outputs.map(\.name)
    var selected: [Tensor] = []
    for name in order {
      guard let tensor = outputs.first(where: { $0.name == name }) else {
        throw PalisadeError(.internal, "inference failed", detail: "model did not produce output '\(name)'")
      }
      selected.append(tensor)
    }
    return selected
  }

  /// The wire response for already selected (and hardened) outputs.
  public func encode(
    outputs selected: [Tensor], raw: Bool, descriptor: ModelDescriptor, requestID: String
  ) throws(PalisadeError) -> Inference_ModelInferResponse {
    let useRaw = raw || selected.contains { WireTensorEncoder.requiresRaw($0.datatype) }
    var response = Inference_ModelInferResponse()
    response.modelName = descriptor.name
    response.modelVersion = descriptor.version
    response.id = requestID
    for tensor in selected {
      var out = Inference_ModelInferResponse.InferOutputTensor()
      out.name = tensor.name
      out.datatype = tensor.datatype.rawValue
      out.shape = tensor.shape
      if useRaw {
        response.rawOutputContents.append(Data(tensor.rawContents))
      } else {
        out.contents = WireTensorEncoder.typedContents(tensor)
      }
      response.outputs.append(out)
    }
    return response
  }
}
