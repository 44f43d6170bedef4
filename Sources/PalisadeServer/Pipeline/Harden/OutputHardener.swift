import Foundation
public import PalisadeCore

/// Pipeline stage 9: applies the model's ``OutputPolicy`` to what it computed. Only declared outputs reach this
/// stage (``ModelExecutor`` refuses anything else); score outputs (floating point, last dimension the classes)
/// are cut to their top k, rounded, or replaced by their arg-max label, so that a caller learns no more than the
/// publisher chose to reveal. The same rules describe the published outputs in `ModelMetadata`.
public struct OutputHardener: Sendable {
  public init() {}

  /// Whether `spec` holds per-class scores the policy acts on.
  static func isScores(_ spec: TensorSpec) -> Bool {
    guard [.fp16, .fp32, .fp64].contains(spec.datatype), let last = spec.shape.last else { return false }
    return last != 1
  }

  /// The outputs as callers see them, for `ModelMetadata`.
  public func publishedOutputs(_ descriptor: ModelDescriptor) -> [TensorSpec] {
    let policy = descriptor.outputPolicy
    return descriptor.outputs.map { spec in
      guard Self.isScores(spec) else { return spec }
      if policy.labelOnly {
        return TensorSpec(name: spec.name, datatype: .bytes, shape: Array(spec.shape.dropLast()))
      }
      if let k = policy.topK {
        let last = spec.shape.last ?? -1
        let width = last < 0 ? Int64(k) : min(Int64(k), last)
        return TensorSpec(name: spec.name, datatype: .bytes, shape: spec.shape.dropLast() + [width])
      }
      return spec
    }
  }

  /// Applies the policy to computed outputs (already filtered to the requested ones).
  public func harden(_ outputs: [Tensor], descriptor: ModelDescriptor) throws(PalisadeError) -> [Tensor] {
    let policy = descriptor.outputPolicy
    guard policy.transformsTensors else { return outputs }
    var result: [Tensor] = []
    result.reserveCapacity(outputs.count)
    for tensor in outputs {
      guard let spec = descriptor.outputs.first(where: { $0.name == tensor.name }), Self.isScores(spec),
        let classes = tensor.shape.last, classes > 0
      else {
        result.append(tensor)
        continue
      }
      let scores = tensor.floatingPointValues ?? []
      let c = Int(classes)
      let rows = scores.count / c
      let prefix = Array(tensor.shape.dropLast())
      if policy.labelOnly {
        var labels: [[UInt8]] = []
        labels.reserveCapacity(rows)
        for r in 0..<rows {
          let row = scores[(r * c)..<(r * c + c)]
          let best = row.indices.max { row[$0] < row[$1] || (row[$0] == row[$1] && $0 > $1) } ?? r * c
          labels.append(Array(Self.label(best - r * c, policy.labels).utf8))
        }
        result.append(try Tensor(name: tensor.name, datatype: .bytes, shape: prefix, storage: .bytes(labels)))
      } else if let k = policy.topK {
        let width = min(k, c)
        var entries: [[UInt8]] = []
        entries.reserveCapacity(rows * width)
        for r in 0..<rows {
          let base = r * c
          // Highest score first; ties keep the lower class index first.
          let order = (0..<c).sorted {
            scores[base + $0] > scores[base + $1] || (scores[base + $0] == scores[base + $1] && $0 < $1)
          }
          for i in order.prefix(width) {
            var text = "\(Self.format(scores[base + i], decimals: policy.roundDecimals)):\(i)"
            if let labels = policy.labels, i < labels.count { text += ":\(labels[i])" }
            entries.append(Array(text.utf8))
          }
        }
        result.append(
          try Tensor(name: tensor.name, datatype: .bytes, shape: prefix + [Int64(width)], storage: .bytes(entries)))
      } else if let d = policy.roundDecimals {
        result.append(try Self.rounded(tensor, decimals: d))
      } else {
        result.append(tensor)
      }
    }
    return result
  }

  static func label(_ index: Int, _ labels: [String]?) -> String {
    if let labels, index < labels.count { return labels[index] }
    return String(index)
  }

  static func round(_ v: Double, decimals: Int) -> Double {
    guard v.isFinite else { return v }
    let scale = pow(10, Double(decimals))
    return (v * scale).rounded() / scale
  }

  static func format(_ v: Double, decimals: Int?) -> String {
    guard let decimals else { return String(Float(v)) }
    return String(format: "%.\(decimals)f", round(v, decimals: decimals))
  }

  static func rounded(_ tensor: Tensor, decimals: Int) throws(PalisadeError) -> Tensor {
    let values = (tensor.floatingPointValues ?? []).map { round($0, decimals: decimals) }
    switch tensor.datatype {
    case .fp64: return try Tensor(name: tensor.name, shape: tensor.shape, values: values)
    case .fp32: return try Tensor(name: tensor.name, shape: tensor.shape, values: values.map { Float($0) })
    default:
      var raw: [UInt8] = []
      raw.reserveCapacity(values.count * 2)
      for v in values {
        let bits = Half.bits(from: Float(v))
        raw.append(UInt8(bits & 0xff))
        raw.append(UInt8(bits >> 8))
      }
      return try Tensor(name: tensor.name, datatype: .fp16, shape: tensor.shape, storage: .fixed(raw))
    }
  }
}
