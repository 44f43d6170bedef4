/// A small strict JSON reader (RFC 8259) used for `model.sig`, its signed payload, and as a pre-check of the manifest.
///
/// Why not Foundation: we need object key order kept, duplicate keys refused (a duplicate is a classic way to make two
/// parsers disagree about what was signed), a depth limit, and exact code-point strings (Swift `String` equality is
/// canonical-equivalence based; callers compare `utf8` bytes).
enum JSONValue: Sendable, Equatable {
  case null
  case bool(Bool)
  /// The number's text as written, and its value.
  case number(String, Double)
  case string(String)
  case array([JSONValue])
  /// Members in document order; keys are unique.
  case object([(String, JSONValue)])

  static func == (lhs: JSONValue, rhs: JSONValue) -> Bool {
    switch (lhs, rhs) {
    case (.null, .null): return true
    case (.bool(let a), .bool(let b)): return a == b
    case (.number(let a, _), .number(let b, _)): return a == b
    case (.string(let a), .string(let b)): return Array(a.utf8) == Array(b.utf8)
    case (.array(let a), .array(let b)): return a == b
    case (.object(let a), .object(let b)):
      return a.count == b.count && zip(a, b).allSatisfy { Array($0.0.utf8) == Array($1.0.utf8) && $0.1 == $1.1 }
    default: return false
    }
  }

  var typeName: String {
    switch self {
    case .null: "null"
    case .bool: "boolean"
    case .number: "number"
    case .string: "string"
    case .array: "array"
    case .object: "object"
    }
  }
}

/// Parse failure with the byte offset; the caller wraps it into a `BundleError` naming the file.
struct JSONParseError: Error, Sendable {
  let offset: Int
  let message: String
}

struct StrictJSONParser {
  private let bytes: [UInt8]
  private var index = 0
  private let maxDepth: Int

  /// Parses one JSON document; trailing non-whitespace is an error.
  static func parse(_ bytes: [UInt8], maxDepth: Int = 64) throws(JSONParseError) -> JSONValue {
    var parser = StrictJSONParser(bytes: bytes, maxDepth: maxDepth)
    // A UTF-8 BOM is not JSON (RFC 8259 §8.1 lets parsers refuse it).
    parser.skipWhitespace()
    let value = try parser.parseValue(depth: 0)
    parser.skipWhitespace()
    guard parser.index == bytes.count else { throw parser.error("trailing data after the JSON document") }
    return value
  }

  private init(bytes: [UInt8], maxDepth: Int) {
    self.bytes = bytes
    self.maxDepth = maxDepth
  }

  private func error(_ message: String) -> JSONParseError { JSONParseError(offset: index, message: message) }

  private mutating func skipWhitespace() {
    while index < bytes.count,
      bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09
    {
      index += 1
    }
  }

  private mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
    guard depth <= maxDepth else { throw error("nesting deeper than \(maxDepth)") }
    guard index < bytes.count else { throw error("unexpected end of input") }
    switch bytes[index] {
    case UInt8(ascii: "{"): return try parseObject(depth: depth)
    case UInt8(ascii: "["): return try parseArray(depth: depth)
    case UInt8(ascii: "\""): return .string(try parseString())
    case UInt8(ascii: "t"):
      try expectLiteral("true")
      return .bool(true)
    case UInt8(ascii: "f"):
      try expectLiteral("false")
      return .bool(false)
    case UInt8(ascii: "n"):
      try expectLiteral("null")
      return .null
    case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
    default: throw error("unexpected character")
    }
  }

  private mutating func expectLiteral(_ literal: StaticString) throws(JSONParseError) {
    let count = literal.utf8CodeUnitCount
    guard index + count <= bytes.count else { throw error("unexpected end of input") }
    let expected = UnsafeBufferPointer(start: literal.utf8Start, count: count)
    for i in 0..<count where bytes[index + i] != expected[i] { throw error("invalid literal") }
    index += count
  }

  private mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
    index += 1
    var members: [(String, JSONValue)] = []
    var seen = Set<[UInt8]>()
    skipWhitespace()
    if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
      index += 1
      return .object(members)
    }
    while true {
      skipWhitespace()
      guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected a member name") }
      let key = try parseString()
      guard seen.insert(Array(key.utf8)).inserted else { throw error("duplicate member '\(key)'") }
      skipWhitespace()
      guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
      index += 1
      skipWhitespace()
      let value = try parseValue(depth: depth + 1)
      members.append((key, value))
      skipWhitespace()
      guard index < bytes.count else { throw error("unexpected end of input") }
      if bytes[index] == UInt8(ascii: ",") {
        index += 1
        continue
      }
      guard bytes[index] == UInt8(ascii: "}") else { throw error("expected ',' or '}'") }
      index += 1
      return .object(members)
    }
  }

  private mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
    index += 1
    var elements: [JSONValue] = []
    skipWhitespace()
    if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
      index += 1
      return .array(elements)
    }
    while true {
      skipWhitespace()
      elements.append(try parseValue(depth: depth + 1))
      skipWhitespace()
      guard index < bytes.count else { throw error("unexpected end of input") }
      if bytes[index] == UInt8(ascii: ",") {
        index += 1
        continue
      }
      guard bytes[index] == UInt8(ascii: "]") else { throw error("expected ',' or ']'") }
      index += 1
      return .array(elements)
    }
  }

  private mutating func parseNumber() throws(JSONParseError) -> JSONValue {
    let start = index
    if bytes[index] == UInt8(ascii: "-") { index += 1 }
    guard index < bytes.count else { throw error("invalid number") }
    if bytes[index] == UInt8(ascii: "0") {
      index += 1
    } else if (UInt8(ascii: "1")...UInt8(ascii: "9")).contains(bytes[index]) {
      while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
    } else {
      throw error("invalid number")
    }
    if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
      index += 1
      let digitsStart = index
      while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
      guard index > digitsStart else { throw error("invalid number") }
    }
    if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
      index += 1
      if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
      let digitsStart = index
      while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
      guard index > digitsStart else { throw error("invalid number") }
    }
    let text = String(decoding: bytes[start..<index], as: UTF8.self)
    guard let value = Double(text), value.isFinite else { throw error("number out of range") }
    return .number(text, value)
  }

  private mutating func parseHex4() throws(JSONParseError) -> UInt32 {
    guard index + 4 <= bytes.count else { throw error("truncated \\u escape") }
    var value: UInt32 = 0
    for _ in 0..<4 {
      let c = bytes[index]
      let digit: UInt32
      switch c {
      case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(c - UInt8(ascii: "0"))
      case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(c - UInt8(ascii: "a") + 10)
      case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(c - UInt8(ascii: "A") + 10)
      default: throw error("invalid \\u escape")
      }
      value = value << 4 | digit
      index += 1
    }
    return value
  }

  private mutating func parseString() throws(JSONParseError) -> String {
    index += 1  // opening quote
    var scalars = String.UnicodeScalarView()
    var runStart = index
    func flushRun(_ parser: inout StrictJSONParser, upTo end: Int) throws(JSONParseError) {
      guard runStart < end else { return }
      // Raw bytes must be valid UTF-8 (no overlongs, no surrogates): decoding strictly.
      guard let run = String(validating: parser.bytes[runStart..<end], as: UTF8.self) else {
        throw parser.error("invalid UTF-8 in string")
      }
      scalars.append(contentsOf: run.unicodeScalars)
    }
    while true {
      guard index < bytes.count else { throw error("unterminated string") }
      let c = bytes[index]
      if c == UInt8(ascii: "\"") {
        try flushRun(&self, upTo: index)
        index += 1
        return String(scalars)
      }
      if c < 0x20 { throw error("control character in string") }
      if c != UInt8(ascii: "\\") {
        index += 1
        continue
      }
      try flushRun(&self, upTo: index)
      index += 1
      guard index < bytes.count else { throw error("unterminated escape") }
      let e = bytes[index]
      index += 1
      switch e {
      case UInt8(ascii: "\""): scalars.append("\"")
      case UInt8(ascii: "\\"): scalars.append("\\")
      case UInt8(ascii: "/"): scalars.append("/")
      case UInt8(ascii: "b"): scalars.append("\u{08}")
      case UInt8(ascii: "f"): scalars.append("\u{0C}")
      case UInt8(ascii: "n"): scalars.append("\n")
      case UInt8(ascii: "r"): scalars.append("\r")
      case UInt8(ascii: "t"): scalars.append("\t")
      case UInt8(ascii: "u"):
        let first = try parseHex4()
        var code = first
        if (0xD800...0xDBFF).contains(first) {
          guard index + 2 <= bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u")
          else {
            throw error("lone surrogate in \\u escape")
          }
          index += 2
          let second = try parseHex4()
          guard (0xDC00...0xDFFF).contains(second) else { throw error("lone surrogate in \\u escape") }
          code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else if (0xDC00...0xDFFF).contains(first) {
          throw error("lone surrogate in \\u escape")
        }
        guard let scalar = Unicode.Scalar(code) else { throw error("invalid \\u escape") }
        scalars.append(scalar)
      default:
        throw error("invalid escape")
      }
      runStart = index
    }
  }
}

/// Typed access to a parsed object that remembers which members were read, so unknown ones can be refused.
struct JSONObjectReader {
  let path: String
  let file: String
  private let members: [(String, JSONValue)]

  init(_ value: JSONValue, path: String, file: String, kind: BundleError.Kind) throws(BundleError) {
    guard case .object(let members) = value else {
      throw BundleError(kind, "\(file): '\(path)' must be an object, found \(value.typeName)")
    }
    self.members = members
    self.path = path
    self.file = file
  }

  func field(_ name: String) -> String { path.isEmpty ? name : "\(path).\(name)" }

  func value(_ name: String) -> JSONValue? {
    let key = Array(name.utf8)
    return members.first { Array($0.0.utf8) == key }?.1
  }

  /// Refuses any member not in `known`.
  func rejectUnknown(_ known: Set<String>, kind: BundleError.Kind) throws(BundleError) {
    for (key, _) in members where !known.contains(where: { Array($0.utf8) == Array(key.utf8) }) {
      throw BundleError(kind, "\(file): unknown field '\(field(key))'")
    }
  }

  func required(_ name: String, kind: BundleError.Kind) throws(BundleError) -> JSONValue {
    guard let v = value(name) else { throw BundleError(kind, "\(file): missing field '\(field(name))'") }
    return v
  }

  func string(_ name: String, kind: BundleError.Kind) throws(BundleError) -> String {
    guard case .string(let s) = try required(name, kind: kind) else {
      throw BundleError(kind, "\(file): field '\(field(name))' must be a string")
    }
    return s
  }

  func optionalString(_ name: String, kind: BundleError.Kind) throws(BundleError) -> String? {
    guard let v = value(name) else { return nil }
    guard case .string(let s) = v else { throw BundleError(kind, "\(file): field '\(field(name))' must be a string") }
    return s
  }

  func array(_ name: String, kind: BundleError.Kind) throws(BundleError) -> [JSONValue] {
    guard case .array(let a) = try required(name, kind: kind) else {
      throw BundleError(kind, "\(file): field '\(field(name))' must be an array")
    }
    return a
  }

  func object(_ name: String, kind: BundleError.Kind) throws(BundleError) -> JSONObjectReader {
    try JSONObjectReader(try required(name, kind: kind), path: field(name), file: file, kind: kind)
  }

  func bool(_ name: String, kind: BundleError.Kind) throws(BundleError) -> Bool {
    guard case .bool(let b) = try required(name, kind: kind) else {
      throw BundleError(kind, "\(file): field '\(field(name))' must be a boolean")
    }
    return b
  }
}
