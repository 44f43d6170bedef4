import PalisadeCore

/// Concatenates requests along the batch dimension and splits the results back, for dynamic batching.
enum TensorBatch {
  /// Rows of a request whose inputs all share their first dimension; nil when they do not (it runs alone).
  static func rows(_ inputs: [Tensor]) -> Int? {
    guard let first = inputs.first?.shape.first, first >= 0 else { return nil }
    return inputs.allSatisfy { $0.shape.first == first } ? Int(first) : nil
  }

  /// The non-batch dimensions of every input: requests merge only when these agree.
  static func key(_ inputs: [Tensor]) -> [[Int64]] {
    inputs.map { Array($0.shape.dropFirst()) }
  }

  /// Concatenates each input of `requests` (same names, order, datatypes and non-batch dimensions).
  static func concatenate(_ requests: [[Tensor]]) throws(PalisadeError) -> [Tensor] {
    guard let head = requests.first else { return [] }
    var merged: [Tensor] = []
    for (i, template) in head.enumerated() {
      var rows: Int64 = 0
      switch template.storage {
      case .fixed:
        var raw: [UInt8] = []
        raw.reserveCapacity(requests.reduce(0) { $0 + $1[i].rawContents.count })
        for r in requests {
          guard case .fixed(let bytes) = r[i].storage else { throw mismatch() }
          raw += bytes
          rows += r[i].shape.first ?? 0
        }
        merged.append(
          try Tensor(
            name: template.name, datatype: template.datatype, shape: [rows] + template.shape.dropFirst(),
            storage: .fixed(raw)))
      case .bytes:
        var elements: [[UInt8]] = []
        for r in requests {
          guard case .bytes(let e) = r[i].storage else { throw mismatch() }
          elements += e
          rows += r[i].shape.first ?? 0
        }
        merged.append(
          try Tensor(
            name: template.name, datatype: template.datatype, shape: [rows] + template.shape.dropFirst(),
            storage: .bytes(elements)))
      }
    }
    return merged
  }

  /// Splits batched outputs into one list per request, by their row counts.
  static func split(_ outputs: [Tensor], rows: [Int]) throws(PalisadeError) -> [[Tensor]] {
    let total = rows.reduce(0, +)
    var result = [[Tensor]](repeating: [], count: rows.count)
    for output in outputs {
      guard let first = output.shape.first, Int(first) == total, total > 0 else {
        throw PalisadeError(
          .internal, "inference failed", detail: "batched output '\(output.name)' has no batch dimension of \(total)")
      }
      let tail = Array(output.shape.dropFirst())
      var start = 0
      for (j, n) in rows.enumerated() {
        let shape = [Int64(n)] + tail
        switch output.storage {
        case .fixed(let raw):
          let perRow = raw.count / total
          result[j].append(
            try Tensor(
              name: output.name, datatype: output.datatype, shape: shape,
              storage: .fixed(Array(raw[(start * perRow)..<((start + n) * perRow)]))))
        case .bytes(let elements):
          let perRow = elements.count / total
          result[j].append(
            try Tensor(
              name: output.name, datatype: output.datatype, shape: shape,
              storage: .bytes(Array(elements[(start * perRow)..<((start + n) * perRow)]))))
        }
        start += n
      }
    }
    return result
  }

  static func mismatch() -> PalisadeError {
    PalisadeError(.internal, "inference failed", detail: "batched requests disagree in storage")
  }
}
