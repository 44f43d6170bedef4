import Foundation
import Testing

@testable import PalisadeBundle

/// Numbers a file controls (manifest JSON, tar headers, the state file) that do not fit: a clean error naming the
/// field, never a trap.
@Suite("Hostile numbers")
struct HostileNumberTests {
  func refuse(_ json: String, _ fragment: String, sourceLocation: SourceLocation = #_sourceLocation) {
    do {
      let m = try BundleManifest.decode(Array(json.utf8))
      Issue.record("accepted (max_batch \(String(describing: m.maxBatch)))", sourceLocation: sourceLocation)
    } catch {
      #expect(error.kind == .invalidManifest, sourceLocation: sourceLocation)
      #expect(error.reason.contains(fragment), "reason was: \(error.reason)", sourceLocation: sourceLocation)
    }
  }

  @Test("manifest integers out of range") func manifestIntegers() {
    let base = manifestJSON()
    for value in ["1e300", "-1e300", "9223372036854775808", "1.5", "1e19", "-9223372036854775809"] {
      refuse(base.replacingOccurrences(of: "\"max_batch\": 8", with: "\"max_batch\": \(value)"), "max_batch")
      refuse(base.replacingOccurrences(of: "\"version\": 3", with: "\"version\": \(value)"), "version")
      refuse(base.replacingOccurrences(of: "\"top_k\": 2", with: "\"top_k\": \(value)"), "top_k")
    }
    refuse(base.replacingOccurrences(of: "\"max_batch\": 8", with: "\"max_batch\": -9223372036854775808"), "max_batch")
    refuse(
      base.replacingOccurrences(of: "\"round_decimals\": 3", with: "\"round_decimals\": 9223372036854775807"),
      "round_decimals")
  }

  @Test("manifest shapes whose size overflows") func manifestShapes() {
    let base = manifestJSON()
    let shapes = [
      "[1e300, 4]", "[9223372036854775808, 4]", "[-2, 4]", "[-9223372036854775808, 4]",
      // Each fits Int64; their product does not (it would overflow a later byte-size computation).
      "[9223372036854775807, 4]", "[4294967296, 4294967296, 4]", "[2147483648, 4]",
    ]
    for shape in shapes {
      refuse(base.replacingOccurrences(of: "\"shape\": [-1, 4]", with: "\"shape\": \(shape)"), "inputs[0].shape")
    }
    refuse(
      base.replacingOccurrences(
        of: "\"shape\": [-1, 3]", with: "\"shape\": [9223372036854775807, 9223372036854775807]"),
      "outputs[0].shape")
    // The largest allowed fixed size still loads.
    let ok = base.replacingOccurrences(of: "\"shape\": [-1, 4]", with: "\"shape\": [-1, 536870911, 4]")
    #expect((try? BundleManifest.decode(Array(ok.utf8))) != nil)
  }

  @Test("accepted-versions state with hostile numbers") func stateFile() throws {
    let temp = try TempDir()
    for value in ["1e300", "1.5", "-1", "0", "9223372036854775808", "\"3\""] {
      let path = try temp.write("state-\(UUID().uuidString).json", "{\"digits\": \(value)}")
      #expect(throws: BundleError.self, "\(value)") { _ = try AcceptedVersions(path: path) }
    }
  }

  /// A tar header's size field, written raw.
  static func header(_ name: String, sizeField: [UInt8]) throws -> [UInt8] {
    var h = try ArchiveTests.header(name)
    for i in 124..<136 { h[i] = i - 124 < sizeField.count ? sizeField[i - 124] : 0 }
    for i in 148..<156 { h[i] = 0x20 }
    let sum = h.reduce(0) { $0 + Int($1) }
    let text = Array(String(sum, radix: 8).utf8)
    let field = [UInt8](repeating: UInt8(ascii: "0"), count: 6 - text.count) + text + [0, 0x20]
    for (i, b) in field.enumerated() { h[148 + i] = b }
    return h
  }

  @Test("tar size fields: overflow, base-256, junk") func tarSizes() async throws {
    let temp = try TempDir()
    let (dir, _, trust) = try await ArchiveTests.signedBundle(in: temp)
    let sig = try ArchiveTests.signatureEntry(dir)
    let cases: [([UInt8], String)] = [
      (Array("777777777777".utf8), "beyond the limit"),  // 12 digits, no terminator: 2^36 - 1
      (Array("77777777777\0".utf8), "beyond the limit"),  // the ustar maximum, 8 GiB - 1
      ([0x80] + [UInt8](repeating: 0xFF, count: 11), "unreadable size field"),  // GNU base-256
      ([0xFF] + [UInt8](repeating: 0xFF, count: 11), "unreadable size field"),  // base-256 negative
      (Array("-0000000001\0".utf8), "unreadable size field"),
      (Array("00000000009\0".utf8), "unreadable size field"),
      (Array("0x000000010\0".utf8), "unreadable size field"),
      ([], "unreadable size field"),
    ]
    for (field, fragment) in cases {
      let t = try TempDir()
      let archive = try ArchiveTests.archive(sig + [try Self.header("model.onnx", sizeField: field)], in: t)
      await expectRefused(fragment, kind: .unsafeArchive) {
        try await ArchiveTests.unpack(
          archive, into: t.sub("out"), trust: trust, limits: UnpackLimits(maxTotalBytes: 1 << 30))
      }
      #expect(!FileManager.default.fileExists(atPath: t.sub("out")))
    }
    // The same on the leading model.sig: refused before anything is read into memory.
    let t = try TempDir()
    let archive = try ArchiveTests.archive([try Self.header("model.sig", sizeField: Array("777777777777".utf8))], in: t)
    await expectRefused("model.sig is larger than", kind: .unsafeArchive) {
      try await ArchiveTests.unpack(archive, into: t.sub("out"), trust: trust)
    }
  }
}
