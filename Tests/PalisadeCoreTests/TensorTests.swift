import Testing
@testable import PalisadeCore

@Suite struct TensorShapeTests {
  @Test func elementCountMultiplies() {
    #expect(TensorShape.elementCount([]) == 1)
    #expect(TensorShape.elementCount([2, 3, 4]) == 24)
    #expect(TensorShape.elementCount([5, 0]) == 0)
  }

  @Test func negativeDimensionIsRefused() {
    #expect(TensorShape.elementCount([2, -1]) == nil)
  }

  @Test func overflowingShapeIsRefusedNotTrapped() {
    #expect(TensorShape.elementCount([1 << 32, 1 << 32]) == nil)
    #expect(TensorShape.elementCount([Int64.max, 2]) == nil)
    #expect(TensorShape.byteCount(elements: Int.max / 2, of: .fp64) == nil)
  }

  @Test func declaredShapeMatching() {
    #expect(TensorShape.matches([3, 4], declared: [-1, 4]))
    #expect(!TensorShape.matches([3, 5], declared: [-1, 4]))
    #expect(!TensorShape.matches([3], declared: [-1, 4]))
  }
}

@Suite struct TensorTests {
  @Test func fixedStorageMustMatchShape() throws {
    #expect(throws: PalisadeError.self) {
      try Tensor(name: "x", datatype: .fp32, shape: [2], storage: .fixed([0, 0, 0, 0]))
    }
    let t = try Tensor(name: "x", shape: [2], values: [Float(1.5), -2])
    #expect(t.values(as: Float.self) == [1.5, -2])
    #expect(t.values(as: Int32.self) == nil)
  }

  @Test func bytesRawContentsCarryLengthPrefixes() throws {
    let t = try Tensor(name: "s", datatype: .bytes, shape: [2], storage: .bytes([[0x61], [0x62, 0x63]]))
    #expect(t.rawContents == [1, 0, 0, 0, 0x61, 2, 0, 0, 0, 0x62, 0x63])
  }

  @Test func errorMessagesNameTheInputButNotItsData() throws {
    do {
      _ = try Tensor(name: "secret-input", datatype: .int8, shape: [3], storage: .fixed([42, 42]))
      Issue.record("expected an error")
    } catch {
      #expect(error.code == .invalidArgument)
      #expect(error.message.contains("secret-input"))
      #expect(!error.message.contains("42"))
    }
  }

  @Test func namesAreSanitisedBeforeEchoing() {
    let hostile = "a'\u{7}" + String(repeating: "x", count: 500)
    let safe = hostile.sanitizedForMessage
    #expect(!safe.contains("'"))
    #expect(!safe.unicodeScalars.contains { $0.value == 7 })
    #expect(safe.count < 200)
  }

  @Test(arguments: [Float(0), 1, -1, 0.5, 65504, 6.1035156e-05, 5.9604645e-08, -2.5, Float.infinity])
  func halfRoundTrips(_ value: Float) {
    #expect(Half.float(from: Half.bits(from: value)) == value)
  }

  @Test func halfRoundsAndSaturates() {
    #expect(Half.bits(from: 1e6) == 0x7C00)
    #expect(Half.float(from: Half.bits(from: 0.1)) == 0.099975586)
    #expect(Half.float(from: Half.bits(from: .nan)).isNaN)
  }
}

@Suite struct ModelRepositoryTests {
  struct Fake: ServableModel {
    let descriptor: ModelDescriptor
    init(_ name: String, _ version: String) {
      descriptor = ModelDescriptor(name: name, version: version, platform: "t", inputs: [], outputs: [])
    }
    func infer(_ request: InferenceRequest) async throws -> [Tensor] { [] }
  }

  @Test func resolvesNewestReadyVersion() throws {
    let repo = ModelRepository()
    repo.register(Fake("m", "2"))
    repo.register(Fake("m", "10"))
    repo.register(Fake("m", "11"), state: .loading)
    #expect(try repo.resolve(name: "m", version: "").descriptor.version == "10")
    #expect(try repo.resolve(name: "m", version: "2").descriptor.version == "2")
    #expect(repo.versions(of: "m") == ["11", "10", "2"])
  }

  @Test func unknownModelAndVersionAreNotFound() {
    let repo = ModelRepository()
    repo.register(Fake("m", "1"))
    #expect(throws: PalisadeError(.notFound, "unknown model 'x'")) { try repo.resolve(name: "x", version: "") }
    #expect { try repo.resolve(name: "m", version: "9") } throws: { ($0 as? PalisadeError)?.code == .notFound }
    #expect { try repo.resolve(name: "", version: "") } throws: { ($0 as? PalisadeError)?.code == .invalidArgument }
  }

  @Test func unreadyVersionIsUnavailable() {
    let repo = ModelRepository()
    repo.register(Fake("m", "1"), state: .loading)
    #expect { try repo.resolve(name: "m", version: "1") } throws: { ($0 as? PalisadeError)?.code == .unavailable }
    #expect(!repo.isReady(name: "m", version: ""))
  }

  @Test func serverReadinessFollowsRequiredModels() {
    let repo = ModelRepository(required: ["a", "b"])
    repo.register(Fake("a", "1"))
    #expect(!repo.isServerReady)
    #expect(repo.missingRequired == ["b"])
    repo.register(Fake("b", "1"))
    #expect(repo.isServerReady)
    repo.setState(name: "c", version: "1", .loading)
    #expect(!repo.isServerReady)
    #expect(repo.remove(name: "c"))
    #expect(repo.isServerReady)
  }
}

/// A shape whose element count fits `Int` but whose byte size does not: refused, not trapped (the byte size was
/// computed unchecked).
@Suite struct TensorByteSizeTests {
  @Test func byteSizeOverflowIsRefused() {
    for shape: [Int64] in [[1 << 62], [1 << 61, 2], [Int64.max], [3, 1 << 61]] {
      #expect(throws: PalisadeError.self, "\(shape)") {
        _ = try Tensor(name: "x", datatype: .fp32, shape: shape, storage: .fixed([]))
      }
      #expect(throws: PalisadeError.self, "\(shape)") {
        _ = try Tensor(name: "x", datatype: .fp64, shape: shape, storage: .fixed([0, 0, 0, 0, 0, 0, 0, 0]))
      }
    }
  }
}

@Suite struct FinitenessTests {
  @Test func nonFiniteValuesAreFoundInEveryFloatingDatatype() throws {
    for bad in [Float.nan, .infinity, -.infinity] {
      #expect(try !Tensor(name: "x", shape: [3], values: [1, bad, 2] as [Float]).allFinite)
      #expect(try !Tensor(name: "x", shape: [2], values: [Double(bad), 0]).allFinite)
      let half = Half.bits(from: bad)
      let fp16 = try Tensor(
        name: "x", datatype: .fp16, shape: [2], storage: .fixed([0, 0, UInt8(half & 0xFF), UInt8(half >> 8)]))
      #expect(!fp16.allFinite)
      let b = bad.bitPattern >> 16
      let bf16 = try Tensor(name: "x", datatype: .bf16, shape: [1], storage: .fixed([UInt8(b & 0xFF), UInt8(b >> 8)]))
      #expect(!bf16.allFinite)
    }
    #expect(try Tensor(name: "x", shape: [3], values: [1, -2, .greatestFiniteMagnitude] as [Float]).allFinite)
    #expect(try Tensor(name: "x", shape: [2], values: [Int32.max, 0]).allFinite)
  }

  /// The check reads 64 bytes at a time and then the tail: a bad value is found in every lane of every chunk and in
  /// the tail, whatever its sign or payload, and the largest finite values pass everywhere.
  @Test func aNonFiniteValueIsFoundAtEveryPositionOfALongTensor() throws {
    let count = 77  // chunks of 16, 32 and 8 lanes plus a tail, for each width
    let floats: [(DataType, Int, [UInt64], UInt64)] = [
      (.fp32, 4, [0x7F80_0000, 0xFF80_0000, 0x7FC0_0001, 0xFFFF_FFFF], 0x7F7F_FFFF),
      (.fp64, 8, [0x7FF0_0000_0000_0000, 0xFFF8_0000_0000_0000, 0x7FF0_0000_0000_0001], 0xFFEF_FFFF_FFFF_FFFF),
      (.fp16, 2, [0x7C00, 0xFC00, 0x7E01], 0x7BFF),
      (.bf16, 2, [0x7F80, 0xFF80, 0x7FC1], 0xFF7F),
    ]
    func bytes(_ values: [UInt64], width: Int) -> [UInt8] {
      values.flatMap { v in (0..<width).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }
    }
    for (datatype, width, bads, largest) in floats {
      let finite = try Tensor(
        name: "x", datatype: datatype, shape: [Int64(count)],
        storage: .fixed(bytes(Array(repeating: largest, count: count), width: width)))
      #expect(finite.allFinite, "\(datatype): largest finite value everywhere")
      for bad in bads {
        for position in 0..<count {
          var values = [UInt64](repeating: largest, count: count)
          values[position] = bad
          let tensor = try Tensor(
            name: "x", datatype: datatype, shape: [Int64(count)], storage: .fixed(bytes(values, width: width)))
          #expect(!tensor.allFinite, "\(datatype) \(String(bad, radix: 16)) at \(position)")
        }
      }
    }
  }
}
