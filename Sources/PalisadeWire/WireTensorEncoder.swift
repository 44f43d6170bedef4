import Foundation
public import PalisadeCore
public import PalisadeProto

/// Tensor → wire: the typed `InferTensorContents` form. FP16 and BF16 have no typed field and must travel raw;
/// for them this returns empty contents and callers switch to raw.
public enum WireTensorEncoder {
  /// The typed contents holding `t`'s elements.
  public static func typedContents(_ t: Tensor) -> Inference_InferTensorContents {
    var c = Inference_InferTensorContents()
    switch t.datatype {
    case .bool: if case .fixed(let raw) = t.storage { c.boolContents = raw.map { $0 != 0 } }
    case .int8: c.intContents = (t.values(as: Int8.self) ?? []).map(Int32.init)
    case .int16: c.intContents = (t.values(as: Int16.self) ?? []).map(Int32.init)
    case .int32: c.intContents = t.values(as: Int32.self) ?? []
    case .int64: c.int64Contents = t.values(as: Int64.self) ?? []
    case .uint8: c.uintContents = (t.values(as: UInt8.self) ?? []).map(UInt32.init)
    case .uint16: c.uintContents = (t.values(as: UInt16.self) ?? []).map(UInt32.init)
    case .uint32: c.uintContents = t.values(as: UInt32.self) ?? []
    case .uint64: c.uint64Contents = t.values(as: UInt64.self) ?? []
    case .fp32: c.fp32Contents = t.values(as: Float.self) ?? []
    case .fp64: c.fp64Contents = t.values(as: Double.self) ?? []
    case .bytes: c.bytesContents = (t.byteElements ?? []).map { Data($0) }
    case .fp16, .bf16: break
    }
    return c
  }

  /// True when `datatype` can only be sent raw.
  public static func requiresRaw(_ datatype: DataType) -> Bool {
    datatype == .fp16 || datatype == .bf16
  }
}
