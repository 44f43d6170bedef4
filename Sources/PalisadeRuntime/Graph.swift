/// A node attribute, decoded from `AttributeProto`.
enum Attribute: Sendable {
  case int(Int64)
  case float(Float)
  case ints([Int64])
  case floats([Float])
  case string(String)
  case tensor(HostTensor)
  /// Kinds the runtime does not use (graphs, sparse tensors, type protos, lists of strings or tensors).
  case other(String)
}

/// One graph node, with value names resolved to indices into the model's value table.
struct GraphNode: Sendable {
  var name: String
  var opType: String
  var domain: String
  /// Value ids; `nil` for an omitted optional input (empty name).
  var inputs: [Int?]
  var outputs: [Int?]
  var attributes: [String: Attribute]

  /// A readable identity for error messages.
  var label: String { name.isEmpty ? opType : "\(opType) '\(name.sanitizedForModelMessage)'" }

  func int(_ key: String, _ fallback: Int) throws(RuntimeError) -> Int {
    guard let a = attributes[key] else { return fallback }
    guard case .int(let v) = a else { throw .malformed("\(label): attribute '\(key)' must be an int") }
    guard let i = Int(exactly: v) else { throw .limit("\(label): attribute '\(key)' out of range") }
    return i
  }

  func float(_ key: String, _ fallback: Float) throws(RuntimeError) -> Float {
    guard let a = attributes[key] else { return fallback }
    switch a {
    case .float(let v): return v
    case .int(let v): return Float(v)
    default: throw .malformed("\(label): attribute '\(key)' must be a float")
    }
  }

  func ints(_ key: String) throws(RuntimeError) -> [Int]? {
    guard let a = attributes[key] else { return nil }
    guard case .ints(let v) = a else { throw .malformed("\(label): attribute '\(key)' must be a list of ints") }
    var out: [Int] = []
    out.reserveCapacity(v.count)
    for x in v {
      guard let i = Int(exactly: x), abs(i) < (1 << 48) else {
        throw .limit("\(label): attribute '\(key)' value out of range")
      }
      out.append(i)
    }
    return out
  }

  func string(_ key: String, _ fallback: String) throws(RuntimeError) -> String {
    guard let a = attributes[key] else { return fallback }
    guard case .string(let v) = a else { throw .malformed("\(label): attribute '\(key)' must be a string") }
    return v
  }
}

extension String {
  /// A model-supplied name made safe for logs and error messages: bounded, control characters replaced.
  var sanitizedForModelMessage: String {
    var out = ""
    for scalar in unicodeScalars.prefix(96) {
      if scalar.properties.generalCategory == .control || scalar == "'" {
        out.append("?")
      } else {
        out.unicodeScalars.append(scalar)
      }
    }
    if unicodeScalars.count > 96 { out += "…" }
    return out
  }
}

/// Kahn's algorithm over value dependencies. Returns node indices in an order where every node comes after the
/// producers of its inputs; throws if the graph has a cycle.
func topologicalOrder(nodes: [GraphNode], valueCount: Int) throws(RuntimeError) -> [Int] {
  var producer = [Int](repeating: -1, count: valueCount)
  for (i, node) in nodes.enumerated() {
    for case let v? in node.outputs { producer[v] = i }
  }
  var indegree = [Int](repeating: 0, count: nodes.count)
  var consumers = [[Int]](repeating: [], count: nodes.count)
  for (i, node) in nodes.enumerated() {
    for case let v? in node.inputs where producer[v] >= 0 {
      indegree[i] += 1
      consumers[producer[v]].append(i)
    }
  }
  var ready = (0..<nodes.count).filter { indegree[$0] == 0 }.reversed() as [Int]
  var order: [Int] = []
  order.reserveCapacity(nodes.count)
  // Keep the file's order where possible (a stack seeded in reverse, consumers pushed in reverse).
  var head = 0
  ready.reverse()
  while head < ready.count {
    let n = ready[head]
    head += 1
    order.append(n)
    for c in consumers[n] {
      indegree[c] -= 1
      if indegree[c] == 0 { ready.append(c) }
    }
  }
  if order.count != nodes.count {
    let stuck = (0..<nodes.count).filter { indegree[$0] > 0 }
    let names = stuck.prefix(8).map { nodes[$0].label }.joined(separator: ", ")
    throw .graph("the graph has a cycle through \(stuck.count) node(s): \(names)\(stuck.count > 8 ? ", …" : "")")
  }
  return order
}
