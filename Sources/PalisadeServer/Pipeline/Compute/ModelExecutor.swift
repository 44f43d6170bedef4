public import PalisadeCore

/// Pipeline stage 8: runs the model and checks that what it returned honours its own declaration.
///
/// A model that returns a missing, extra or mistyped output is a bug in the model runtime, reported as INTERNAL
/// to the caller (details to the log), never passed on.
public struct ModelExecutor: Sendable {
  public init() {}

  public func run(_ model: any ServableModel, inputs: [Tensor], requestedOutputs: [String]?) async throws -> [Tensor] {
    let outputs: [Tensor]
    do {
      outputs = try await model.infer(InferenceRequest(inputs: inputs, requestedOutputs: requestedOutputs))
    } catch let error as PalisadeError {
      throw error
    } catch is CancellationError {
      throw PalisadeError(.deadlineExceeded, "call cancelled or deadline exceeded during inference")
    } catch {
      throw PalisadeError(.internal, "inference failed", detail: "\(model.descriptor.name): \(error)")
    }
    let declared = model.descriptor.outputs
    for output in outputs {
      guard let spec = declared.first(where: { $0.name == output.name }), spec.datatype == output.datatype,
        TensorShape.matches(output.shape, declared: spec.shape)
      else {
        throw PalisadeError(
          .internal, "inference failed",
          detail: "\(model.descriptor.name) returned undeclared or mistyped output '\(output.name)'")
      }
    }
    return outputs
  }
}
