import PalisadeYAML
import Testing

/// The strict reader every config and policy file goes through: typed values, every key consumed, and errors that
/// name the file, line and key path.
@Suite struct YAMLReaderTests {
  private func refusal(_ text: String, _ read: (YAMLMap) throws(YAMLError) -> Void) -> YAMLError? {
    do {
      let map = try YAMLMap.parse(text, file: "t.yaml")
      try read(map)
      try map.finish()
      return nil
    } catch {
      return error
    }
  }

  @Test func typedValuesAreRead() throws {
    let map = try YAMLMap.parse(
      "name: digits\ncount: 3\nratio: 0.25\non: true\nmode: fast\nlist: [a, b]\nnested:\n  inner: 7\nitems:\n  - k: 1\n  - k: 2\n"
    )
    #expect(try map.string("name") == "digits")
    #expect(try map.int("count", in: 0...10) == 3)
    #expect(try map.double("ratio", in: 0...1) == 0.25)
    #expect(try map.bool("on") == true)
    #expect(try map.choice("mode", ["fast", "slow"]) == "fast")
    #expect(try map.strings("list") == ["a", "b"])
    let nested = try #require(try map.map("nested"))
    #expect(nested.path == "nested")
    #expect(try nested.int("inner", in: 0...10) == 7)
    try nested.finish()
    let items = try #require(try map.maps("items"))
    #expect(items.map(\.path) == ["items[0]", "items[1]"])
    for item in items {
      _ = try item.int("k", in: 0...5)
      try item.finish()
    }
    #expect(try map.string("absent") == nil)
    try map.finish()
  }

  @Test func emptyDocumentIsEmptyAndNullValuesAreRefusedByName() throws {
    let empty = try YAMLMap.parse("")
    #expect(empty.keys.isEmpty)
    try empty.finish()
    // A value lost to a templating mistake must not become the (often permissive) default.
    for (text, read) in [
      ("a:\n", { (m: YAMLMap) throws(YAMLError) in _ = try m.string("a") }),
      ("a: null\n", { (m: YAMLMap) throws(YAMLError) in _ = try m.int("a", in: 0...1) }),
      ("a: ~\n", { (m: YAMLMap) throws(YAMLError) in _ = try m.bool("a") }),
      ("a: ~\n", { (m: YAMLMap) throws(YAMLError) in _ = try m.strings("a") }),
      ("a: !!null ''\n", { (m: YAMLMap) throws(YAMLError) in _ = try m.maps("a") }),
    ] {
      let e = refusal(text, read)
      #expect(e?.path == "a" && e?.message.contains("has no value") == true, "\(text): \(String(describing: e))")
    }
    let quoted = try YAMLMap.parse("d: \"null\"\n")
    #expect(try quoted.string("d") == "null", "a quoted null is a string")
    try quoted.finish()
  }

  @Test func aSectionWithoutValueIsAnEmptySectionWhoseRequiredSettingsStillApply() throws {
    let map = try YAMLMap.parse("tls:\n  # every setting commented out\nlimits: ~\n")
    let tls = try #require(try map.map("tls"))
    #expect(tls.keys.isEmpty && tls.path == "tls")
    try tls.finish()
    let limits = try #require(try map.map("limits"))
    #expect(try limits.int("max", in: 0...9) == nil)
    try map.finish()
    let e = refusal("rate_limit:\n") { m throws(YAMLError) in
      guard let r = try m.map("rate_limit"), try r.double("per_second", in: 0...1) != nil else {
        throw m.error("rate_limit.per_second", "is required")
      }
    }
    #expect(e?.message == "is required")
  }

  @Test func unknownKeyIsRefusedWithItsPathAndLine() {
    let e = refusal("server:\n  listen: x\n  lisen: y\n") { m throws(YAMLError) in
      let server = try m.map("server")
      _ = try server?.string("listen")
      try server?.finish()
    }
    #expect(e?.path == "server.lisen")
    #expect(e?.line == 3)
    #expect(e?.file == "t.yaml")
    #expect(e?.message.contains("unknown setting") == true)
    #expect(e?.message.contains("listen") == true, "names the known keys")
  }

  @Test func duplicateKeyIsRefused() {
    // A repeated key must not let a later line silently override a reviewed earlier one.
    let e = refusal("token_ttl: 60\ntoken_ttl: 86400\n") { m throws(YAMLError) in
      _ = try m.int("token_ttl", in: 0...100_000)
    }
    #expect(e?.message.contains("duplicated key(s): 'token_ttl'") == true, "\(String(describing: e))")
    let nested = refusal("a:\n  b: 1\n  b: 2\n") { _ throws(YAMLError) in }
    #expect(nested?.message.contains("'b'") == true, "\(String(describing: nested))")
  }

  @Test func mergeKeysAreNotSilentlyHonoured() {
    // `<<: *base` would import settings nobody reads here; it is an unknown key like any other.
    let e = refusal("base: &b {x: 1}\nuse:\n  <<: *b\n  y: 2\n") { m throws(YAMLError) in
      _ = try m.map("base").map { b throws(YAMLError) in
        _ = try b.int("x", in: 0...9)
        try b.finish()
      }
      let use = try m.map("use")
      _ = try use?.int("y", in: 0...9)
      try use?.finish()
    }
    #expect(e?.path == "use.<<")
  }

  @Test func wrongTypesNameTheKey() {
    let cases: [(String, (YAMLMap) throws(YAMLError) -> Void, String, String)] = [
      ("n: abc\n", { m throws(YAMLError) in _ = try m.int("n", in: 0...9) }, "n", "must be an integer"),
      ("n: 12\n", { m throws(YAMLError) in _ = try m.int("n", in: 0...9) }, "n", "must be between 0 and 9, got 12"),
      ("x: .nan\n", { m throws(YAMLError) in _ = try m.double("x", in: 0...1) }, "x", "must be a number"),
      ("x: .inf\n", { m throws(YAMLError) in _ = try m.double("x", in: 0...1) }, "x", "must be a number"),
      ("b: yes\n", { m throws(YAMLError) in _ = try m.bool("b") }, "b", "must be true or false"),
      (
        "c: medium\n", { m throws(YAMLError) in _ = try m.choice("c", ["fast", "slow"]) }, "c",
        "must be one of fast, slow, got 'medium'"
      ),
      ("s: [a, {b: 1}]\n", { m throws(YAMLError) in _ = try m.strings("s") }, "s[1]", "must be a string"),
      ("m: 3\n", { m throws(YAMLError) in _ = try m.map("m") }, "m", "must be a mapping"),
      ("l: [1]\n", { m throws(YAMLError) in _ = try m.maps("l") }, "l[0]", "must be a mapping"),
      ("s: {a: 1}\n", { m throws(YAMLError) in _ = try m.string("s") }, "s", "must be a string"),
    ]
    for (text, read, path, message) in cases {
      let e = refusal(text, read)
      #expect(e?.path == path, "\(text)")
      #expect(e?.message == message, "\(text)")
      #expect(e?.line == 1, "\(text)")
    }
  }

  /// Numbers are read as YAML 1.2's core schema writes them. YAML 1.1's base 60 trapped on overflow inside Yams
  /// (found by the egress-config fuzz target; `Fuzz/regressions/egress-config/` keeps the input) and read `1:30`
  /// as 90; its leading-zero octal read `0443` as 291.
  @Test func numbersAreReadAsYAML12WritesThem() throws {
    let good: [(String, Int)] = [
      ("42", 42), ("-5", -5), ("+7", 7), ("0", 0), ("0x1F", 31), ("0o17", 15), ("1_000_000", 1_000_000),
      ("9223372036854775807", Int.max),
    ]
    for (text, value) in good {
      #expect(try YAMLMap.parse("n: \(text)\n").int("n", in: Int.min...Int.max) == value, "\(text)")
    }
    let bad: [(String, String)] = [
      ("+55555557155555555555:12727", "must be an integer"),
      ("1:0:0:0:0:0:0:0:0:0:0:0", "must be an integer"),
      ("1:30", "must be an integer"),
      (
        "0443", "must be an integer without leading zeros, got '0443' (write 0o… for octal; YAML 1.1 reads it as octal)"
      ),
      ("9223372036854775808", "must be between 0 and 10, got 9223372036854775808"),
      ("'5'", "must be an integer"), ("0b101", "must be an integer"), ("1__0", "must be an integer"),
      ("_1", "must be an integer"), ("1_", "must be an integer"), ("0x", "must be an integer"),
      ("+", "must be an integer"),
      ("1.0", "must be an integer"), ("0o8", "must be an integer"),
    ]
    for (text, message) in bad {
      let e = refusal("n: \(text)\n") { m throws(YAMLError) in _ = try m.int("n", in: 0...10) }
      #expect(e?.message == message, "\(text)")
    }
    let decimals: [(String, Double)] = [
      ("0.25", 0.25), (".5", 0.5), ("1e3", 1000), ("-2.5E-1", -0.25), ("3", 3), ("1.", 1),
    ]
    for (text, value) in decimals {
      #expect(try YAMLMap.parse("x: \(text)\n").double("x", in: -1e9...1e9) == value, "\(text)")
    }
    for text in ["1:30", "0x1p3", "1_0.5", "1e", ".", "1e400", "\"0.5\"", "inf", "-.inf", "nan", "1.5.2"] {
      let e = refusal("x: \(text)\n") { m throws(YAMLError) in _ = try m.double("x", in: -1e9...1e9) }
      #expect(e?.message == "must be a number", "\(text)")
    }
  }

  @Test func malformedDocumentsAreRefusedWithALine() {
    for text in ["a: [1, 2\n", "a: b: c\n", "\t- x\n", "key: \"unterminated\n"] {
      let e = refusal(text) { _ throws(YAMLError) in }
      #expect(e?.message.hasPrefix("not valid YAML") == true, "\(text): \(String(describing: e))")
      #expect(e?.line != nil, "\(text)")
    }
    let list = refusal("- a\n- b\n") { _ throws(YAMLError) in }
    #expect(list?.message == "the top level must be a mapping")
    let scalar = refusal("just text\n") { _ throws(YAMLError) in }
    #expect(scalar?.message == "the top level must be a mapping")
  }

  @Test func nonStringKeysAreRefused() {
    let e = refusal("? [a, b]\n: 1\n") { _ throws(YAMLError) in }
    #expect(e?.message == "keys must be strings")
  }

  @Test func aliasBombStaysSmall() throws {
    // "Billion laughs": nine levels of ten aliases each. Aliases share the anchored node, so composing is cheap,
    // and a reader that asks for strings refuses the nested lists at the first element.
    var text = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for level in 1...9 {
      let refs = Array(repeating: "*a\(level - 1)", count: 10).joined(separator: ", ")
      text += "a\(level): &a\(level) [\(refs)]\n"
    }
    let map = try YAMLMap.parse(text)
    #expect(try map.strings("a0")?.count == 10)
    #expect(throws: YAMLError.self) { _ = try map.strings("a9") }
  }

  @Test func errorDescriptionNamesFileLineAndKey() {
    let e = YAMLError(file: "palisade.yaml", path: "server.tls.private_key", line: 12, message: "must be a string")
    #expect(e.description == "palisade.yaml:12: server.tls.private_key: must be a string")
    #expect(YAMLError(path: "", line: 3, message: "bad").description == "line 3: bad")
    #expect(YAMLError(path: "k", line: nil, message: "bad").description == "k: bad")
  }
}
