public import PalisadeProto

/// Pads a response to the next multiple of the model's bucket size, so that the length of what leaves the server
/// (and of the TLS records carrying it) says nothing about which class, label or how many scores it holds.
///
/// The filler is a string parameter, `palisade_padding`, of spaces; clients ignore unknown parameters.
public struct ResponsePadding: Sendable {
  /// The parameter that carries the filler.
  public static let parameter = "palisade_padding"

  public init() {}

  /// Pads `response` in place to a multiple of `bucket` serialized bytes (at least one byte of filler is added).
  public func pad(_ response: inout Inference_ModelInferResponse, bucket: Int) {
    guard bucket > 0 else { return }
    response.parameters[Self.parameter] = nil
    let base = size(response)
    var target = ((base + bucket - 1) / bucket) * bucket
    // The filler's own framing (map entry, key, varint lengths) costs bytes; adjust the filler length until the
    // total lands exactly on the target, moving to the next bucket when a varint boundary makes that impossible.
    for _ in 0..<8 {
      var filler = max(0, target - base - 16)
      for _ in 0..<4 {
        set(&response, filler)
        let now = size(response)
        if now == target { return }
        filler += target - now
        if filler < 0 { break }
      }
      target += bucket
    }
  }

  private func set(_ response: inout Inference_ModelInferResponse, _ count: Int) {
    var p = Inference_InferParameter()
    p.stringParam = String(repeating: " ", count: max(0, count))
    response.parameters[Self.parameter] = p
  }

  private func size(_ response: Inference_ModelInferResponse) -> Int {
    (try? response.serializedBytes() as [UInt8])?.count ?? 0
  }
}
