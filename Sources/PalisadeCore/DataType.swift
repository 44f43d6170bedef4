/// The Open Inference Protocol tensor datatypes (`inference_rest.md`, "Tensor Data Types"), plus Triton's BF16.
public enum DataType: String, Sendable, CaseIterable, Hashable, Codable {
  case bool = "BOOL"
  case uint8 = "UINT8"
  case uint16 = "UINT16"
  case uint32 = "UINT32"
  case uint64 = "UINT64"
  case int8 = "INT8"
  case int16 = "INT16"
  case int32 = "INT32"
  case int64 = "INT64"
  case fp16 = "FP16"
  case bf16 = "BF16"
  case fp32 = "FP32"
  case fp64 = "FP64"
  case bytes = "BYTES"

  /// Bytes per element in the raw (little-endian, row-major) encoding; `nil` for BYTES, whose elements each
  /// carry a 4-byte little-endian length prefix.
  public var elementSize: Int? {
    switch self {
    case .bool, .uint8, .int8: 1
    case .uint16, .int16, .fp16, .bf16: 2
    case .uint32, .int32, .fp32: 4
    case .uint64, .int64, .fp64: 8
    case .bytes: nil
    }
  }

  /// Parses a wire datatype name; names are case-sensitive as in the protocol.
  public init?(wireName: String) {
    self.init(rawValue: wireName)
  }
}
