import CZstd
import Foundation
import Testing

@testable import PalisadeBundle

@Suite("Packed bundles")
struct ArchiveTests {
  /// A ustar header with arbitrary fields (valid checksum unless told otherwise).
  static func header(
    _ name: String, type: Character = "0", size: Int64 = 0, link: String = "", magic: [UInt8] = Array("ustar".utf8) + [0],
    version: [UInt8] = Array("00".utf8)
  ) throws -> [UInt8] {
    var h = try Tar.header(path: "placeholder", size: size, directory: false)
    for i in 0..<100 { h[i] = 0 }
    for (i, b) in name.utf8.prefix(100).enumerated() { h[i] = b }
    h[156] = type.asciiValue ?? 0
    for (i, b) in link.utf8.prefix(100).enumerated() { h[157 + i] = b }
    for (i, b) in magic.enumerated() { h[257 + i] = b }
    for (i, b) in version.enumerated() { h[263 + i] = b }
    for i in 148..<156 { h[i] = 0x20 }
    let sum = h.reduce(0) { $0 + Int($1) }
    let text = Array(String(sum, radix: 8).utf8)
    let field = [UInt8](repeating: UInt8(ascii: "0"), count: 6 - text.count) + text + [0, 0x20]
    for (i, b) in field.enumerated() { h[148 + i] = b }
    return h
  }

  static func archive(_ blocks: [[UInt8]], in temp: TempDir, name: String = "a.tar.zst") throws -> String {
    var tar = blocks.flatMap { $0 }
    tar += [UInt8](repeating: 0, count: 1024)
    let path = temp.sub(name)
    try Data(try ZstdCompressor.compress(tar)).write(to: URL(fileURLWithPath: path))
    return path
  }

  static func decompress(_ compressed: [UInt8]) throws -> [UInt8] {
    let d = try ZstdDecompressor()
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    try compressed.withUnsafeBytes { raw in
      var input = ZSTD_inBuffer(src: raw.baseAddress, size: raw.count, pos: 0)
      while true {
        let (n, _) = try buffer.withUnsafeMutableBytes { try d.step(&input, into: $0) }
        out += buffer[0..<n]
        if input.pos == input.size && n < buffer.count { break }
      }
    }
    return out
  }

  static func data(_ bytes: [UInt8]) -> [UInt8] { bytes + [UInt8](repeating: 0, count: (512 - bytes.count % 512) % 512) }

  @Test("pack, unpack, verify") func roundTrip() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let key = TestKey()
    try await BundleSigner.sign(directory: dir, key: key.signing)
    // A long path exercises the ustar prefix field.
    let archive = temp.sub("bundle.tar.zst")
    try BundlePacker.pack(directory: dir, to: archive)
    let out = temp.sub("out")
    let result = try BundleUnpacker.unpack(archive: archive, into: out)
    #expect(result.files == 6)
    var st = stat()
    #expect(stat(out, &st) == 0 && st.st_mode & 0o777 == 0o700)
    #expect(stat((out as NSString).appendingPathComponent("model.onnx"), &st) == 0 && st.st_mode & 0o777 == 0o400)
    let trust = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [.publicKey(key.publicKey)])])
    let verified = try await BundleVerifier.verify(directory: out, trust: trust, modelName: "digits")
    #expect(verified.files.count == 5)
    // Deterministic output.
    let again = temp.sub("again.tar.zst")
    try BundlePacker.pack(directory: dir, to: again)
    #expect(try temp.read("bundle.tar.zst") == temp.read("again.tar.zst"))
    // The output directory must not exist yet.
    #expect(throws: BundleError.self) { try BundleUnpacker.unpack(archive: archive, into: out) }
  }

  @Test("system tar reads our archives") func systemTar() throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let long = String(repeating: "d", count: 60) + "/" + String(repeating: "e", count: 60) + "/" + String(repeating: "f", count: 80)
    try temp.write("bundle/" + long, "deep")
    let archive = temp.sub("b.tar.zst")
    try BundlePacker.pack(directory: dir, to: archive)
    // Decompress in-process (the zstd CLI may be absent) and let the system tar list it.
    let tarPath = temp.sub("b.tar")
    try Data(try Self.decompress(try temp.read("b.tar.zst"))).write(to: URL(fileURLWithPath: tarPath))
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["tar", "-tvf", tarPath]
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let listing = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    #expect(p.terminationStatus == 0)
    #expect(listing.contains(long))
    #expect(listing.contains("sub/deeper/notes.md"))
    let out = temp.sub("out")
    try BundleUnpacker.unpack(archive: archive, into: out)
    #expect(try temp.read("out/" + long) == Array("deep".utf8))
  }

  func refused(_ blocks: [[UInt8]], _ fragment: String, limits: UnpackLimits = UnpackLimits(), sourceLocation: SourceLocation = #_sourceLocation) throws {
    let temp = try TempDir()
    let archive = try Self.archive(blocks, in: temp)
    let out = temp.sub("out")
    do {
      try BundleUnpacker.unpack(archive: archive, into: out, limits: limits)
      Issue.record("archive was accepted", sourceLocation: sourceLocation)
    } catch {
      #expect(error.reason.contains(fragment), "reason was: \(error.reason)", sourceLocation: sourceLocation)
      #expect(error.kind == .unsafeArchive, sourceLocation: sourceLocation)
    }
    // Nothing is left behind.
    #expect(!FileManager.default.fileExists(atPath: out), sourceLocation: sourceLocation)
  }

  @Test("tar with '..'") func dotDot() throws {
    try refused([try Self.header("../evil", size: 4), Self.data(Array("evil".utf8))], "'..' path components are not allowed")
    try refused([try Self.header("a/../../evil", size: 0)], "'..' path components")
  }

  @Test("tar with an absolute path") func absolute() throws {
    try refused([try Self.header("/etc/evil", size: 0)], "absolute paths are not allowed")
  }

  @Test("tar with a symlink or hard link") func links() throws {
    try refused([try Self.header("link", type: "2", link: "/etc/passwd")], "symbolic links are not allowed")
    try refused([try Self.header("hard", type: "1", link: "model.onnx")], "hard links are not allowed")
  }

  @Test("tar with a device or FIFO") func devices() throws {
    try refused([try Self.header("dev", type: "3")], "device entries are not allowed")
    try refused([try Self.header("blk", type: "4")], "device entries are not allowed")
    try refused([try Self.header("fifo", type: "6")], "FIFO entries are not allowed")
  }

  @Test("non-ustar oddities") func oddities() throws {
    try refused([try Self.header("pax", type: "x")], "pax extended headers")
    try refused([try Self.header("gnu", type: "L")], "GNU long-name")
    try refused([try Self.header("old", magic: Array("ustar ".utf8), version: [0x20, 0])], "not a POSIX ustar header")
    var bad = try Self.header("sum")
    bad[0] = UInt8(ascii: "t")
    try refused([bad], "header checksum mismatch")
    try refused([try Self.header("dup"), try Self.header("dup")], "duplicate entry")
    try refused([try Self.header("file", size: 5), Self.data(Array("12345".utf8)), try Self.header("file/child")], "a parent is not a directory")
  }

  @Test("limits: files, path length, total size") func limits() throws {
    try refused([try Self.header("a"), try Self.header("b"), try Self.header("c")], "more than 2 entries", limits: UnpackLimits(maxFiles: 2))
    try refused([try Self.header(String(repeating: "x", count: 40))], "path longer than 32 bytes", limits: UnpackLimits(maxPathLength: 32))
    try refused(
      [try Self.header("big", size: 4096), [UInt8](repeating: 7, count: 4096)], "the limit of 2048",
      limits: UnpackLimits(maxTotalBytes: 2048))
  }

  @Test("zstd bomb: 1 GB of zeros is refused early and fast") func bomb() throws {
    let temp = try TempDir()
    let path = temp.sub("bomb.tar.zst")
    // Stream-compress a tar header claiming 1 GiB followed by 1 GiB of zeros, without holding it in memory.
    let compressor = try ZstdCompressor(level: 1)
    var compressed: [UInt8] = []
    let sink = { (chunk: UnsafeRawBufferPointer) throws(BundleError) in compressed.append(contentsOf: chunk) }
    let head = try Self.header("zeros.bin", size: 1 << 30)
    try head.withUnsafeBytes { try compressor.compress($0, finish: false, sink: sink) }
    let zeros = [UInt8](repeating: 0, count: 1 << 20)
    for _ in 0..<1024 { try zeros.withUnsafeBytes { try compressor.compress($0, finish: false, sink: sink) } }
    try zeros.prefix(1024).withUnsafeBytes { try compressor.compress(UnsafeRawBufferPointer($0), finish: true, sink: sink) }
    try Data(compressed).write(to: URL(fileURLWithPath: path))
    #expect(compressed.count < 1 << 20)

    let start = ContinuousClock.now
    let out = temp.sub("out")
    do {
      try BundleUnpacker.unpack(archive: path, into: out)
      Issue.record("bomb accepted")
    } catch {
      #expect(error.reason.contains("compression ratio exceeds"), "reason was: \(error.reason)")
    }
    #expect(ContinuousClock.now - start < .seconds(5))
    #expect(!FileManager.default.fileExists(atPath: out))
    // With the ratio disabled, the size limit stops it.
    do {
      try BundleUnpacker.unpack(archive: path, into: out, limits: UnpackLimits(maxTotalBytes: 64 << 20, maxCompressionRatio: .infinity))
      Issue.record("bomb accepted")
    } catch {
      #expect(error.reason.contains("expands beyond the limit"), "reason was: \(error.reason)")
    }
  }

  @Test("truncated archive") func truncated() throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let archive = temp.sub("b.tar.zst")
    try BundlePacker.pack(directory: dir, to: archive)
    let bytes = try temp.read("b.tar.zst")
    try Data(bytes.prefix(bytes.count - 10)).write(to: URL(fileURLWithPath: archive))
    #expect(throws: BundleError.self) { try BundleUnpacker.unpack(archive: archive, into: temp.sub("out")) }
    #expect(!FileManager.default.fileExists(atPath: temp.sub("out")))
  }

  @Test("packing refuses symlinks") func packSymlink() throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    try FileManager.default.createSymbolicLink(atPath: temp.sub("bundle/link"), withDestinationPath: "/etc/passwd")
    #expect(throws: BundleError.self) { try BundlePacker.pack(directory: dir, to: temp.sub("x.tar.zst")) }
  }
}
