import Foundation
import PalisadeCore
import PalisadeONNXProto
import SwiftProtobuf
import Testing
@testable import PalisadeRuntime

/// Builders for small hand-made models.
enum Build {
  static func value(_ name: String, _ type: Int32 = 1, _ dims: [Int64?]) -> Onnx_ValueInfoProto {
    var v = Onnx_ValueInfoProto()
    v.name = name
    var tt = Onnx_TypeProto.Tensor()
    tt.elemType = type
    var shape = Onnx_TensorShapeProto()
    for d in dims {
      var dim = Onnx_TensorShapeProto.Dimension()
      if let d { dim.dimValue = d } else { dim.dimParam = "batch" }
      shape.dim.append(dim)
    }
    tt.shape = shape
    v.type.tensorType = tt
    return v
  }

  static func node(
    _ op: String, _ inputs: [String], _ outputs: [String], domain: String = "", ints: [String: [Int64]] = [:]
  ) -> Onnx_NodeProto {
    var n = Onnx_NodeProto()
    n.opType = op
    n.input = inputs
    n.output = outputs
    n.name = outputs.first ?? op
    if !domain.isEmpty { n.domain = domain }
    for (k, v) in ints {
      var a = Onnx_AttributeProto()
      a.name = k
      a.type = .ints
      a.ints = v
      n.attribute.append(a)
    }
    return n
  }

  static func floats(_ name: String, _ dims: [Int64], _ values: [Float]) -> Onnx_TensorProto {
    var t = Onnx_TensorProto()
    t.name = name
    t.dataType = 1
    t.dims = dims
    t.floatData = values
    return t
  }

  static func model(
    nodes: [Onnx_NodeProto], inputs: [Onnx_ValueInfoProto], outputs: [Onnx_ValueInfoProto],
    initializers: [Onnx_TensorProto] = [], opsets: [(String, Int64)] = [("", 17)]
  ) throws -> [UInt8] {
    var g = Onnx_GraphProto()
    g.name = "test"
    g.node = nodes
    g.input = inputs
    g.output = outputs
    g.initializer = initializers
    var m = Onnx_ModelProto()
    m.irVersion = 8
    m.graph = g
    m.opsetImport = opsets.map { d, v in
      var o = Onnx_OperatorSetIdProto()
      o.domain = d
      o.version = v
      return o
    }
    return try m.serializedBytes()
  }

  /// Loads and returns the error, or nil when the load succeeded.
  static func loadError(_ bytes: [UInt8], externalData: ExternalData? = nil) -> RuntimeError? {
    do {
      _ = try ONNXModel.load(data: bytes, externalData: externalData)
      return nil
    } catch {
      return error
    }
  }
}

@Suite("Malformed and hostile models fail the load with a clear error")
struct BadInputTests {
  @Test func truncatedFile() throws {
    let bytes = try Fixtures.bytes("mlp_torch.onnx")
    for length in [0, 1, 2, 7, 100, bytes.count / 4, bytes.count / 2, bytes.count - 100, bytes.count - 1] {
      let error = Build.loadError(Array(bytes.prefix(length)))
      #expect(error != nil, "truncated to \(length) bytes loaded")
    }
    #expect(Build.loadError(Array(bytes.prefix(bytes.count / 2)))?.kind == .malformedModel)
  }

  @Test func corruptBytes() throws {
    let bytes = try Fixtures.bytes("cnn_torch.onnx")
    // Garbage header: not a protobuf.
    var garbage = bytes
    for i in 0..<16 { garbage[i] = 0xFF }
    #expect(Build.loadError(garbage)?.kind == .malformedModel)
    #expect(Build.loadError([UInt8](repeating: 0x0A, count: 64)) != nil)
    // Random single-byte and burst corruption anywhere: an error or a clean load, never a crash.
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    func next() -> Int {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      return Int(truncatingIfNeeded: state >> 33)
    }
    var failures = 0
    for name in ["cnn_torch.onnx", "encoder_torch.onnx", "mlp_digits.onnx", "glue_ops.onnx"] {
      let original = try Fixtures.bytes(name)
      for trial in 0..<150 {
        var copy = original
        let burst = trial % 4 == 0 ? 8 : 1
        let at = next() % (copy.count - burst)
        for j in 0..<burst { copy[at + j] = UInt8(truncatingIfNeeded: next()) }
        do {
          // A corrupted file that still loads must also run (or fail) cleanly.
          let model = try ONNXModel.load(data: copy)
          let inputs = try model.inputs.map { value -> Tensor in
            let shape = value.dims.map { d -> Int64 in if case .fixed(let n) = d { Int64(n) } else { 2 } }
            let count = Int(shape.reduce(1, *))
            switch value.elementType {
            case .int64: return try Tensor(name: value.name, shape: shape, values: [Int64](repeating: 1, count: count))
            case .bool:
              return try Tensor(
                name: value.name, datatype: .bool, shape: shape, storage: .fixed([UInt8](repeating: 1, count: count)))
            case .float32:
              return try Tensor(name: value.name, shape: shape, values: [Float](repeating: 0.5, count: count))
            }
          }
          _ = try? model.predict(inputs)
        } catch {
          failures += 1
        }
      }
    }
    #expect(failures > 0)
  }

  @Test func graphWithCycle() throws {
    let bytes = try Build.model(
      nodes: [
        Build.node("Add", ["x", "b"], ["a"]), Build.node("Relu", ["a"], ["b"]), Build.node("Relu", ["b"], ["y"]),
      ],
      inputs: [Build.value("x", 1, [nil, 4])], outputs: [Build.value("y", 1, [nil, 4])])
    let error = try #require(Build.loadError(bytes))
    #expect(error.kind == .invalidGraph)
    #expect(error.message.contains("cycle"))
  }

  @Test func undefinedAndDuplicateValues() throws {
    let undefined = try Build.model(
      nodes: [Build.node("Relu", ["nowhere"], ["y"])], inputs: [Build.value("x", 1, [2])],
      outputs: [Build.value("y", 1, [2])])
    #expect(Build.loadError(undefined)?.kind == .invalidGraph)
    let twice = try Build.model(
      nodes: [Build.node("Relu", ["x"], ["y"]), Build.node("Relu", ["x"], ["y"])], inputs: [Build.value("x", 1, [2])],
      outputs: [Build.value("y", 1, [2])])
    #expect(Build.loadError(twice)?.kind == .invalidGraph)
  }

  @Test func mismatchedShapes() throws {
    let add = try Build.model(
      nodes: [Build.node("Add", ["a", "b"], ["y"])],
      inputs: [Build.value("a", 1, [nil, 3]), Build.value("b", 1, [nil, 5])], outputs: [Build.value("y", 1, [nil, 3])])
    let e1 = try #require(Build.loadError(add))
    #expect(e1.kind == .shapeMismatch)
    #expect(e1.message.contains("Add"))
    let matmul = try Build.model(
      nodes: [Build.node("MatMul", ["a", "w"], ["y"])], inputs: [Build.value("a", 1, [nil, 3])],
      outputs: [Build.value("y", 1, [nil, 2])],
      initializers: [Build.floats("w", [4, 2], [Float](repeating: 1, count: 8))])
    #expect(Build.loadError(matmul)?.kind == .shapeMismatch)
    // The declared output shape must agree with inference.
    let declared = try Build.model(
      nodes: [Build.node("Relu", ["a"], ["y"])], inputs: [Build.value("a", 1, [nil, 3])],
      outputs: [Build.value("y", 1, [nil, 4])])
    #expect(Build.loadError(declared)?.kind == .shapeMismatch)
  }

  @Test func declaredSizeDisagreesWithData() throws {
    func model(_ t: Onnx_TensorProto) throws -> [UInt8] {
      try Build.model(
        nodes: [Build.node("Add", ["x", t.name], ["y"])], inputs: [Build.value("x", 1, [10])],
        outputs: [Build.value("y", 1, [10])], initializers: [t])
    }
    var raw = Onnx_TensorProto()
    raw.name = "w"
    raw.dataType = 1
    raw.dims = [10]
    raw.rawData = Data(count: 8)
    let e1 = try #require(Build.loadError(try model(raw)))
    #expect(e1.kind == .shapeMismatch)
    #expect(e1.message.contains("'w'"))
    let typed = Build.floats("w", [10], [1, 2, 3])
    #expect(Build.loadError(try model(typed))?.kind == .shapeMismatch)
    var empty = Onnx_TensorProto()
    empty.name = "w"
    empty.dataType = 1
    empty.dims = [10]
    #expect(Build.loadError(try model(empty))?.kind == .shapeMismatch)
    // And the well-formed version loads.
    #expect(Build.loadError(try model(Build.floats("w", [10], [Float](repeating: 1, count: 10)))) == nil)
  }

  @Test func dimensionsWhoseProductOverflows() throws {
    var huge = Onnx_TensorProto()
    huge.name = "w"
    huge.dataType = 1
    huge.dims = [1 << 40, 1 << 40]
    let weights = try Build.model(
      nodes: [Build.node("Identity", ["w"], ["y"])], inputs: [], outputs: [Build.value("y", 1, [1 << 40, 1 << 40])],
      initializers: [huge])
    #expect(Build.loadError(weights)?.kind == .limitExceeded)
    let input = try Build.model(
      nodes: [Build.node("Relu", ["x"], ["y"])], inputs: [Build.value("x", 1, [1 << 31, 1 << 31, 1 << 31])],
      outputs: [Build.value("y", 1, [1 << 31, 1 << 31, 1 << 31])])
    #expect(Build.loadError(input)?.kind == .limitExceeded)
    // A reshape to an overflowing target.
    var shape = Onnx_TensorProto()
    shape.name = "s"
    shape.dataType = 7
    shape.dims = [3]
    shape.int64Data = [Int64.max / 2, 4, -1]
    let reshape = try Build.model(
      nodes: [Build.node("Reshape", ["x", "s"], ["y"])], inputs: [Build.value("x", 1, [4])],
      outputs: [Build.value("y", 1, [nil, 4, nil])], initializers: [shape])
    #expect(Build.loadError(reshape) != nil)
  }

  @Test func unsupportedEverythingInOneError() throws {
    var str = Onnx_TensorProto()
    str.name = "names"
    str.dataType = 8
    str.dims = [1]
    str.stringData = [Data("a".utf8)]
    let bytes = try Build.model(
      nodes: [
        Build.node("LSTM", ["x"], ["a"]), Build.node("NonMaxSuppression", ["a"], ["b"]),
        Build.node("Relu", ["b"], ["c"]), Build.node("FancyOp", ["c"], ["y"], domain: "com.example"),
        Build.node("LSTM", ["x"], ["z"]),
      ],
      inputs: [Build.value("x", 1, [nil, 4]), Build.value("f16", 10, [2])], outputs: [Build.value("y", 1, [nil, 4])],
      initializers: [str], opsets: [("", 17), ("com.example", 1)])
    let error = try #require(Build.loadError(bytes))
    #expect(error.kind == .unsupported)
    for needle in [
      "LSTM (2 nodes)", "NonMaxSuppression", "com.example.FancyOp", "FLOAT16", "STRING", "opset domain 'com.example'",
    ] {
      #expect(error.message.contains(needle), "missing \(needle) in: \(error.message)")
    }
    #expect(!error.message.contains("Relu"))
  }

  @Test func unsupportedOpset() throws {
    let bytes = try Build.model(
      nodes: [Build.node("Relu", ["x"], ["y"])], inputs: [Build.value("x", 1, [2])],
      outputs: [Build.value("y", 1, [2])],
      opsets: [("", 5)])
    let error = try #require(Build.loadError(bytes))
    #expect(error.kind == .unsupported)
    #expect(error.message.contains("opset ai.onnx 5"))
  }
}

@Suite("External data comes only from the files the runtime is given")
struct ExternalDataTests {
  /// A model reading one [4] FLOAT initializer from external data with the given location/offset/length.
  static func model(location: String, offset: String? = nil, length: String? = nil) throws -> [UInt8] {
    var t = Onnx_TensorProto()
    t.name = "w"
    t.dataType = 1
    t.dims = [4]
    t.dataLocation = .external
    var entries = [("location", location)]
    if let offset { entries.append(("offset", offset)) }
    if let length { entries.append(("length", length)) }
    t.externalData = entries.map { k, v in
      var e = Onnx_StringStringEntryProto()
      e.key = k
      e.value = v
      return e
    }
    return try Build.model(
      nodes: [Build.node("Add", ["x", "w"], ["y"])], inputs: [Build.value("x", 1, [4])],
      outputs: [Build.value("y", 1, [4])], initializers: [t])
  }

  static func model(location: String, offset: Int?, length: Int? = nil) throws -> [UInt8] {
    try model(location: location, offset: offset.map { String($0) }, length: length.map { String($0) })
  }

  static let weights: [UInt8] = {
    let floats: [Float] = [1, 2, 3, 4, 5, 6]
    return floats.withUnsafeBytes { Array($0) }
  }()

  static func sandbox() throws -> (root: URL, models: URL) {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("palisade-ext-\(UUID().uuidString)")
    let models = root.appendingPathComponent("models")
    try FileManager.default.createDirectory(at: models, withIntermediateDirectories: true)
    try Data(weights).write(to: models.appendingPathComponent("weights.bin"))
    try Data(weights).write(to: root.appendingPathComponent("secret.bin"))
    return (root, models)
  }

  @Test func readsTheGivenFile() throws {
    let model = try ONNXModel.load(
      data: try Self.model(location: "weights.bin", offset: 8, length: 16), externalData: ["weights.bin": Self.weights])
    let out = try model.predict([try Tensor(name: "x", shape: [4], values: [Float](repeating: 0, count: 4))])
    #expect(out[0].values(as: Float.self) == [3, 4, 5, 6])
  }

  @Test func refusesLocationsThatAreNotGivenFiles() throws {
    let files: ExternalData = ["weights.bin": Self.weights, "sub/w.bin": Self.weights]
    for location in [
      "../secret.bin", "sub/../../secret.bin", "/etc/passwd", "sub/../weights.bin", "./weights.bin", "sub//w.bin",
      "missing.bin", "",
    ] {
      let error = Build.loadError(try Self.model(location: location), externalData: files)
      #expect(error?.kind == .externalData, "location \(location): \(String(describing: error))")
    }
    #expect(Build.loadError(try Self.model(location: "sub/w.bin", offset: 0), externalData: files) == nil)
    // Offsets and lengths beyond the file, or disagreeing with the declared size.
    #expect(
      Build.loadError(try Self.model(location: "weights.bin", offset: 16), externalData: files)?.kind == .externalData)
    #expect(
      Build.loadError(try Self.model(location: "weights.bin", offset: 1 << 62), externalData: files)?.kind
        == .externalData)
    #expect(
      Build.loadError(try Self.model(location: "weights.bin", offset: nil, length: 12), externalData: files)?.kind
        == .shapeMismatch)
    // No files given: refused.
    #expect(Build.loadError(try Self.model(location: "weights.bin"), externalData: nil)?.kind == .externalData)
  }

  /// Offsets and lengths are decimal strings in the file: hostile ones are a clean error, never a trap.
  @Test func hostileOffsetsAndLengths() throws {
    let files: ExternalData = ["weights.bin": Self.weights]
    let offsets = [
      "-1", "-9223372036854775808", "9223372036854775807", "9223372036854775808", "99999999999999999999999", "1e3",
      "0x10", " 8", "8 ", "",
    ]
    for offset in offsets {
      let error = Build.loadError(try Self.model(location: "weights.bin", offset: offset), externalData: files)
      #expect(error?.kind == .externalData, "offset '\(offset)': \(String(describing: error))")
    }
    for length in ["-16", "-9223372036854775808", "9223372036854775807", "18446744073709551616", "sixteen"] {
      let error = Build.loadError(
        try Self.model(location: "weights.bin", offset: nil, length: length), externalData: files)
      #expect(error != nil, "length '\(length)' loaded")
      #expect(
        error?.kind == .externalData || error?.kind == .shapeMismatch,
        "length '\(length)': \(String(describing: error))")
    }
  }

  /// The tools path (`load(contentsOf:)`) reads external data relative to the model's directory, opening every
  /// component without following links.
  @Test func toolsPathRefusesLinksAndEscapes() throws {
    let (root, models) = try Self.sandbox()
    defer { try? FileManager.default.removeItem(at: root) }
    let fm = FileManager.default
    func write(_ name: String, location: String) throws -> URL {
      let url = models.appendingPathComponent(name)
      try Data(try Self.model(location: location, offset: 8, length: 16)).write(to: url)
      return url
    }
    let good = try ONNXModel.load(contentsOf: try write("good.onnx", location: "weights.bin"))
    let out = try good.predict([try Tensor(name: "x", shape: [4], values: [Float](repeating: 0, count: 4))])
    #expect(out[0].values(as: Float.self) == [3, 4, 5, 6])

    try fm.createSymbolicLink(
      at: models.appendingPathComponent("link.bin"), withDestinationURL: root.appendingPathComponent("secret.bin"))
    try fm.createSymbolicLink(at: models.appendingPathComponent("linkdir"), withDestinationURL: root)
    for (name, location) in [
      ("a.onnx", "link.bin"), ("b.onnx", "linkdir/secret.bin"), ("c.onnx", "../secret.bin"), ("d.onnx", "missing.bin"),
    ] {
      let url = try write(name, location: location)
      do {
        _ = try ONNXModel.load(contentsOf: url)
        Issue.record("\(location) was read")
      } catch {
        #expect(error.kind == .externalData, "\(location): \(error)")
      }
    }
  }
}

@Suite("Hostile attribute values fail cleanly")
struct HostileAttributeTests {
  static func attr(_ name: String, ints: [Int64]) -> Onnx_AttributeProto {
    var a = Onnx_AttributeProto()
    a.name = name
    a.type = .ints
    a.ints = ints
    return a
  }

  @Test func convGeometry() throws {
    let cases: [[Onnx_AttributeProto]] = [
      [Self.attr("strides", ints: [1 << 40, 1])],
      [Self.attr("pads", ints: [1 << 40, 0, 1 << 40, 0])],
      [Self.attr("pads", ints: [-1, 0, 0, 0])],
      [Self.attr("dilations", ints: [Int64.max, 1])],
      [Self.attr("strides", ints: [0, 1])],
      [Self.attr("strides", ints: [1])],
    ]
    for attributes in cases {
      var node = Build.node("Conv", ["x", "w"], ["y"])
      node.attribute = attributes
      let bytes = try Build.model(
        nodes: [node], inputs: [Build.value("x", 1, [nil, 1, 8, 8])],
        outputs: [Build.value("y", 1, [nil, 2, nil, nil])],
        initializers: [Build.floats("w", [2, 1, 3, 3], [Float](repeating: 0.1, count: 18))])
      _ = Build.loadError(bytes)  // an error or (for harmless values) a load; never a trap
    }
  }

  @Test func sliceAndReshapeExtremes() throws {
    func ints(_ name: String, _ v: [Int64]) -> Onnx_TensorProto {
      var t = Onnx_TensorProto()
      t.name = name
      t.dataType = 7
      t.dims = [Int64(v.count)]
      t.int64Data = v
      return t
    }
    for (starts, ends, steps) in [
      ([Int64.min], [Int64.max], [Int64.min]), ([Int64.max], [Int64.min], [-1]), ([0], [4], [0]),
    ] {
      let bytes = try Build.model(
        nodes: [Build.node("Slice", ["x", "s", "e", "a", "st"], ["y"])], inputs: [Build.value("x", 1, [4, 4])],
        outputs: [Build.value("y", 1, [nil, 4])],
        initializers: [ints("s", starts), ints("e", ends), ints("a", [0]), ints("st", steps)])
      _ = Build.loadError(bytes)
    }
    for shape in [[Int64.max, 2], [0, 0, 0], [-1, -1], [Int64.min]] {
      let bytes = try Build.model(
        nodes: [Build.node("Reshape", ["x", "s"], ["y"])], inputs: [Build.value("x", 1, [4, 4])],
        outputs: [Build.value("y", 1, [nil])], initializers: [ints("s", shape)])
      #expect(Build.loadError(bytes) != nil)
    }
  }
}

/// Numbers straight from the file (dims, attribute values) at the edges of their types: an error, never a trap.
@Suite("Hostile numbers in models")
struct HostileNumberTests {
  static func intAttr(_ name: String, _ value: Int64) -> Onnx_AttributeProto {
    var a = Onnx_AttributeProto()
    a.name = name
    a.type = .int
    a.i = value
    return a
  }

  static func stringAttr(_ name: String, _ value: String) -> Onnx_AttributeProto {
    var a = Onnx_AttributeProto()
    a.name = name
    a.type = .string
    a.s = Data(value.utf8)
    return a
  }

  @Test func extremeDimensions() throws {
    for dims in [[Int64.max], [Int64.max, 2], [Int64.min], [1, Int64.max]] as [[Int64?]] {
      let bytes = try Build.model(
        nodes: [Build.node("Relu", ["x"], ["y"])], inputs: [Build.value("x", 1, dims)],
        outputs: [Build.value("y", 1, dims)])
      _ = Build.loadError(bytes)  // an error or (negative dims: unknown size) a load; never a trap
    }
    let huge = try Build.model(
      nodes: [Build.node("Relu", ["x"], ["y"])], inputs: [Build.value("x", 1, [Int64.max])],
      outputs: [Build.value("y", 1, [Int64.max])])
    #expect(Build.loadError(huge)?.kind == .limitExceeded)
    for dims in [[Int64.max], [Int64.min], [-1], [Int64.max, 0], [0, Int64.max], [3_037_000_500, 3_037_000_500]]
      as [[Int64]]
    {
      var t = Onnx_TensorProto()
      t.name = "w"
      t.dataType = 1
      t.dims = dims
      let bytes = try Build.model(
        nodes: [Build.node("Identity", ["w"], ["y"])], inputs: [], outputs: [Build.value("y", 1, [nil])],
        initializers: [t])
      let error = Build.loadError(bytes)
      // A zero-element tensor with a huge other dimension may load; everything else is refused.
      if !dims.contains(0) { #expect(error != nil, "initializer dims \(dims) loaded") }
    }
  }

  /// `group` multiplied the weight's channel count unchecked: INT64_MAX trapped.
  @Test func convGroupAtTheEdges() throws {
    for group in [Int64.max, Int64.min, 0, -1, 1 << 62] {
      var node = Build.node("Conv", ["x", "w"], ["y"])
      node.attribute = [Self.intAttr("group", group)]
      let bytes = try Build.model(
        nodes: [node], inputs: [Build.value("x", 1, [nil, 2, 8, 8])],
        outputs: [Build.value("y", 1, [nil, 2, nil, nil])],
        initializers: [Build.floats("w", [2, 2, 3, 3], [Float](repeating: 0.1, count: 36))])
      let error = Build.loadError(bytes)
      #expect(error != nil, "group \(group) loaded")
    }
  }

  /// SAME padding multiplied file-controlled kernel sizes, dilations and strides unchecked.
  @Test func autoPadGeometryAtTheEdges() throws {
    let big: Int64 = (1 << 48) - 1
    // (kernel, strides, dilations, must fail): a huge stride alone is harmless (one window), the others overflow.
    let cases: [(kernel: [Int64], strides: [Int64], dilations: [Int64], fails: Bool)] = [
      ([big, 1], [1, 1], [big, 1], true),
      ([2, 2], [big, big], [1, 1], false),
      ([big, big], [big, big], [big, big], true),
      ([3, 3], [big, big], [big, big], true),
    ]
    for mode in ["SAME_UPPER", "SAME_LOWER"] {
      for c in cases {
        var node = Build.node(
          "MaxPool", ["x"], ["y"], ints: ["kernel_shape": c.kernel, "strides": c.strides, "dilations": c.dilations])
        node.attribute.append(Self.stringAttr("auto_pad", mode))
        let bytes = try Build.model(
          nodes: [node], inputs: [Build.value("x", 1, [1, 1, 8, 8])], outputs: [Build.value("y", 1, [1, 1, nil, nil])])
        let error = Build.loadError(bytes)
        if c.fails { #expect(error != nil, "\(mode) \(c) loaded") }
      }
    }
  }
}
