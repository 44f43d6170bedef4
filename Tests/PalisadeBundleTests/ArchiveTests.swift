import CZstd
import Foundation
import Testing

@testable import PalisadeBundle

@Suite("Packed bundles")
struct ArchiveTests {
  /// A ustar header with arbitrary fields (valid checksum unless told otherwise).
  static func header(
    _ name: String, type: Character = "0", size: Int64 = 0, link: String = "",
    magic: [UInt8] = Array("ustar".utf8) + [0],
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

  static func data(_ bytes: [UInt8]) -> [UInt8] {
    bytes + [UInt8](repeating: 0, count: (512 - bytes.count % 512) % 512)
  }

  /// A signed bundle directory (the small test bundle), its signer and a trust policy for `digits`.
  static func signedBundle(in temp: TempDir, name: String = "bundle") async throws -> (
    dir: String, key: TestKey, trust: TrustPolicy
  ) {
    let dir = try makeBundleDirectory(in: temp, name: name)
    let key = TestKey()
    try await BundleSigner.sign(directory: dir, key: key.signing)
    return (dir, key, TrustPolicy(rules: [.init(modelPattern: "digits", signers: [.publicKey(key.publicKey)])]))
  }

  /// `model.sig` of `dir` as the leading tar entry.
  static func signatureEntry(_ dir: String) throws -> [[UInt8]] {
    let sig = Array(try Data(contentsOf: URL(fileURLWithPath: (dir as NSString).appendingPathComponent("model.sig"))))
    return [try header("model.sig", size: Int64(sig.count)), data(sig)]
  }

  /// A file of `dir` as a tar entry (optionally with other content).
  static func fileEntry(_ dir: String, _ name: String, content: [UInt8]? = nil) throws -> [[UInt8]] {
    let bytes =
      try content ?? Array(Data(contentsOf: URL(fileURLWithPath: (dir as NSString).appendingPathComponent(name))))
    return [try header(name, size: Int64(bytes.count)), data(bytes)]
  }

  static func unpack(_ archive: String, into out: String, trust: TrustPolicy, limits: UnpackLimits = UnpackLimits())
    async throws
  {
    try await BundleUnpacker.unpack(archive: archive, into: out, trust: trust, modelName: "digits", limits: limits)
  }

  @Test("pack, unpack, verify") func roundTrip() async throws {
    let temp = try TempDir()
    let (dir, _, trust) = try await Self.signedBundle(in: temp)
    // Not signed, so not packed (and an archive holding it would be refused).
    try temp.write("bundle/.gitignore", "*.tmp")
    let archive = temp.sub("bundle.tar.zst")
    try BundlePacker.pack(directory: dir, to: archive)
    // model.sig comes first, so that the unpacker can verify it before writing anything else.
    let tar = try Self.decompress(try temp.read("bundle.tar.zst"))
    #expect(Array(tar[0..<10]) == Array("model.sig\0".utf8))
    let out = temp.sub("out")
    let result = try await BundleUnpacker.unpack(archive: archive, into: out, trust: trust, modelName: "digits")
    #expect(result.files == 6)
    #expect(result.signer.method == .publicKey)
    #expect(!FileManager.default.fileExists(atPath: (out as NSString).appendingPathComponent(".gitignore")))
    var st = stat()
    #expect(stat(out, &st) == 0 && st.st_mode & 0o777 == 0o700)
    #expect(stat((out as NSString).appendingPathComponent("model.onnx"), &st) == 0 && st.st_mode & 0o777 == 0o400)
    let verified = try await BundleVerifier.verify(directory: out, trust: trust, modelName: "digits")
    #expect(verified.files.count == 5)
    #expect(verified.rootDigest == result.rootDigest)
    // Deterministic output.
    let again = temp.sub("again.tar.zst")
    try BundlePacker.pack(directory: dir, to: again)
    #expect(try temp.read("bundle.tar.zst") == temp.read("again.tar.zst"))
    // The output directory must not exist yet.
    await #expect(throws: BundleError.self) { try await Self.unpack(archive, into: out, trust: trust) }
  }

  @Test("packing refuses an unsigned directory") func packUnsigned() throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    #expect(throws: BundleError.self) { try BundlePacker.pack(directory: dir, to: temp.sub("x.tar.zst")) }
  }

  @Test("system tar reads our archives, and writes ones we read") func systemTar() async throws {
    let temp = try TempDir()
    let dir = try makeBundleDirectory(in: temp)
    let long =
      String(repeating: "d", count: 60) + "/" + String(repeating: "e", count: 60) + "/"
      + String(repeating: "f", count: 80)
    try temp.write("bundle/" + long, "deep")
    let key = TestKey()
    try await BundleSigner.sign(directory: dir, key: key.signing)
    let trust = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [.publicKey(key.publicKey)])])
    let archive = temp.sub("b.tar.zst")
    try BundlePacker.pack(directory: dir, to: archive)
    // Decompress in-process (the zstd CLI may be absent) and let the system tar list it.
    let tarPath = temp.sub("b.tar")
    try Data(try Self.decompress(try temp.read("b.tar.zst"))).write(to: URL(fileURLWithPath: tarPath))
    let listing = try Self.run("tar", ["-tvf", tarPath])
    #expect(listing.contains(long))
    #expect(listing.contains("sub/deeper/notes.md"))
    let out = temp.sub("out")
    try await Self.unpack(archive, into: out, trust: trust)
    #expect(try temp.read("out/" + long) == Array("deep".utf8))

    // The documented way to make one without `palisade bundle pack`: ustar format, model.sig named first.
    let own = temp.sub("own.tar")
    _ = try Self.run(
      "tar",
      [
        "--format=ustar", "-C", dir, "-cf", own, "model.sig", "manifest.json", "model.onnx", "empty.dat", "sub.json",
        "sub/deeper/notes.md", long,
      ])
    let ownArchive = temp.sub("own.tar.zst")
    try Data(try ZstdCompressor.compress(try temp.read("own.tar"))).write(to: URL(fileURLWithPath: ownArchive))
    try await Self.unpack(ownArchive, into: temp.sub("out2"), trust: trust)
    // Without model.sig first: refused before anything is written.
    let late = temp.sub("late.tar")
    _ = try Self.run("tar", ["--format=ustar", "-C", dir, "-cf", late, "manifest.json", "model.sig"])
    let lateArchive = temp.sub("late.tar.zst")
    try Data(try ZstdCompressor.compress(try temp.read("late.tar"))).write(to: URL(fileURLWithPath: lateArchive))
    await expectRefused("the first entry must be model.sig", kind: .unsafeArchive) {
      try await Self.unpack(lateArchive, into: temp.sub("out3"), trust: trust)
    }
    #expect(!FileManager.default.fileExists(atPath: temp.sub("out3")))
  }

  static func run(_ tool: String, _ arguments: [String]) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = [tool] + arguments
    let pipe = Pipe()
    p.standardOutput = pipe
    try p.run()
    let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    #expect(p.terminationStatus == 0, "\(tool) \(arguments) failed")
    return output
  }

  /// Expects the archive made of `blocks` to be refused with `fragment`, leaving nothing behind.
  func refused(
    _ blocks: [[UInt8]], _ fragment: String, kind: BundleError.Kind = .unsafeArchive, trust: TrustPolicy? = nil,
    limits: UnpackLimits = UnpackLimits(), sourceLocation: SourceLocation = #_sourceLocation
  ) async throws {
    let temp = try TempDir()
    let archive = try Self.archive(blocks, in: temp)
    let out = temp.sub("out")
    let policy =
      trust ?? TrustPolicy(rules: [.init(modelPattern: "digits", signers: [.publicKey(TestKey().publicKey)])])
    await expectRefused(fragment, kind: kind, sourceLocation: sourceLocation) {
      try await Self.unpack(archive, into: out, trust: policy, limits: limits)
    }
    // Nothing is left behind.
    #expect(!FileManager.default.fileExists(atPath: out), sourceLocation: sourceLocation)
  }

  @Test("tar with '..'") func dotDot() async throws {
    try await refused(
      [try Self.header("../evil", size: 4), Self.data(Array("evil".utf8))], "'..' path components are not allowed")
    try await refused([try Self.header("a/../../evil", size: 0)], "'..' path components")
  }

  @Test("tar with an absolute path") func absolute() async throws {
    try await refused([try Self.header("/etc/evil", size: 0)], "absolute paths are not allowed")
  }

  @Test("tar with a symlink or hard link") func links() async throws {
    try await refused([try Self.header("link", type: "2", link: "/etc/passwd")], "symbolic links are not allowed")
    try await refused([try Self.header("hard", type: "1", link: "model.onnx")], "hard links are not allowed")
    // Also after a valid signature.
    let temp = try TempDir()
    let (dir, _, trust) = try await Self.signedBundle(in: temp)
    try await refused(
      try Self.signatureEntry(dir) + [try Self.header("model.onnx", type: "2", link: "/etc/passwd")],
      "symbolic links are not allowed",
      trust: trust)
  }

  @Test("tar with a device or FIFO") func devices() async throws {
    try await refused([try Self.header("dev", type: "3")], "device entries are not allowed")
    try await refused([try Self.header("blk", type: "4")], "device entries are not allowed")
    try await refused([try Self.header("fifo", type: "6")], "FIFO entries are not allowed")
  }

  @Test("non-ustar oddities") func oddities() async throws {
    try await refused([try Self.header("pax", type: "x")], "pax extended headers")
    try await refused([try Self.header("gnu", type: "L")], "GNU long-name")
    try await refused(
      [try Self.header("old", magic: Array("ustar ".utf8), version: [0x20, 0])], "not a POSIX ustar header")
    var bad = try Self.header("sum")
    bad[0] = UInt8(ascii: "t")
    try await refused([bad], "header checksum mismatch")
    let temp = try TempDir()
    let (dir, _, trust) = try await Self.signedBundle(in: temp)
    let sig = try Self.signatureEntry(dir)
    try await refused(
      sig + (try Self.fileEntry(dir, "sub.json")) + (try Self.fileEntry(dir, "sub.json")), "duplicate entry",
      trust: trust)
    try await refused(sig + sig, "duplicate entry", trust: trust)
  }

  @Test("limits: files, path length, total size") func limits() async throws {
    let temp = try TempDir()
    let (dir, _, trust) = try await Self.signedBundle(in: temp)
    let sig = try Self.signatureEntry(dir)
    try await refused(
      sig + (try Self.fileEntry(dir, "empty.dat")) + [try Self.header("b")], "more than 2 entries", trust: trust,
      limits: UnpackLimits(maxFiles: 2))
    try await refused(
      [try Self.header(String(repeating: "x", count: 40))], "path longer than 32 bytes",
      limits: UnpackLimits(maxPathLength: 32))
    // The signature fits; model.onnx does not (refused for what the zstd frame or the entry's header declares, or
    // for what came out).
    let sofar = Int64(512 + sig[1].count)
    try await refused(
      sig + (try Self.fileEntry(dir, "model.onnx")), "the limit of", trust: trust,
      limits: UnpackLimits(maxTotalBytes: sofar + 4096))
    try await refused(sig, "larger than 64 bytes", trust: trust, limits: UnpackLimits(maxSignatureBytes: 64))
  }

  /// An archive without a valid signature writes nothing: model.sig is verified before the next header is even
  /// read. What follows it here is a header declaring 1 GiB and then garbage; had the unpacker gone on, it would
  /// have refused the garbage (or started writing), not the signature.
  @Test("an unverifiable signature is refused before anything else is read") func badSignatureFirst() async throws {
    let temp = try TempDir()
    let (dir, _, trust) = try await Self.signedBundle(in: temp)
    let tail: [[UInt8]] = [try Self.header("model.onnx", size: 1 << 30), [UInt8](repeating: 0xA5, count: 4096)]
    // Signed by a key the policy does not trust.
    let other = TrustPolicy(rules: [.init(modelPattern: "digits", signers: [.publicKey(TestKey().publicKey)])])
    try await refused(
      try Self.signatureEntry(dir) + tail, "key hint does not match", kind: .untrustedSignature, trust: other)
    // A trusted signer, but not for this model name.
    let elsewhere = TrustPolicy(rules: [.init(modelPattern: "other", signers: trust.rules[0].signers)])
    try await refused(
      try Self.signatureEntry(dir) + tail, "no trust rule for model 'digits'", kind: .untrustedSignature,
      trust: elsewhere)
    // A tampered signature file.
    var sig = Array(try Data(contentsOf: URL(fileURLWithPath: (dir as NSString).appendingPathComponent("model.sig"))))
    sig = Array(String(decoding: sig, as: UTF8.self).replacingOccurrences(of: "\"sig\":\"M", with: "\"sig\":\"N").utf8)
    try await refused(
      [try Self.header("model.sig", size: Int64(sig.count)), Self.data(sig)] + tail, "does not verify",
      kind: .untrustedSignature, trust: trust)
    // Not a signature at all.
    try await refused(
      [try Self.header("model.sig", size: 4), Self.data(Array("junk".utf8))] + tail, "not valid JSON",
      kind: .malformedSignature, trust: trust)
    // No signature first.
    try await refused(tail, "the first entry must be model.sig", trust: trust)
  }

  /// After a valid signature only the signed names are written, each refused at its header if it is not signed,
  /// and at its end if its digest differs.
  @Test("only signed files, with their signed digests, are written") func onlySignedFiles() async throws {
    let temp = try TempDir()
    let (dir, _, trust) = try await Self.signedBundle(in: temp)
    let sig = try Self.signatureEntry(dir)
    // A huge unsigned entry: refused at its header, before any of its (here: garbage) data.
    try await refused(
      sig + [try Self.header("evil.bin", size: 1 << 30), [UInt8](repeating: 0xA5, count: 4096)],
      "evil.bin: not in the signed file set",
      trust: trust)
    try await refused(sig + [try Self.header("extra/", type: "5")], "not a directory of any signed file", trust: trust)
    // A signed name with other content.
    let files = ["manifest.json", "model.onnx", "empty.dat", "sub.json", "sub/deeper/notes.md"]
    var blocks = sig
    for name in files {
      blocks += try Self.fileEntry(dir, name, content: name == "model.onnx" ? Array(repeating: 7, count: 5000) : nil)
    }
    try await refused(blocks, "model.onnx: digest mismatch", kind: .contentMismatch, trust: trust)
    var empty = sig
    for name in files { empty += try Self.fileEntry(dir, name, content: name == "empty.dat" ? [1] : nil) }
    try await refused(empty, "empty.dat: digest mismatch", kind: .contentMismatch, trust: trust)
    // A signed file missing.
    var missing = sig
    for name in files where name != "sub.json" { missing += try Self.fileEntry(dir, name) }
    try await refused(missing, "sub.json: signed file is missing", kind: .contentMismatch, trust: trust)
    // And all of them, in any order, unpack.
    var all = sig
    for name in files.reversed() { all += try Self.fileEntry(dir, name) }
    let archive = try Self.archive(all, in: temp, name: "all.tar.zst")
    try await Self.unpack(archive, into: temp.sub("all"), trust: trust)
    _ = try await BundleVerifier.verify(directory: temp.sub("all"), trust: trust, modelName: "digits")
  }

  @Test("zstd bomb: 1 GB of zeros is refused early and fast") func bomb() async throws {
    let temp = try TempDir()
    let (dir, _, trust) = try await Self.signedBundle(in: temp)
    let path = temp.sub("bomb.tar.zst")
    // Stream-compress a valid model.sig, then a signed name claiming 1 GiB followed by 1 GiB of zeros, without
    // holding it in memory.
    let compressor = try ZstdCompressor(level: 1)
    var compressed: [UInt8] = []
    let sink = { (chunk: UnsafeRawBufferPointer) throws(BundleError) in compressed.append(contentsOf: chunk) }
    let head = try Self.signatureEntry(dir).flatMap { $0 } + (try Self.header("model.onnx", size: 1 << 30))
    try head.withUnsafeBytes { try compressor.compress($0, finish: false, sink: sink) }
    let zeros = [UInt8](repeating: 0, count: 1 << 20)
    for _ in 0..<1024 { try zeros.withUnsafeBytes { try compressor.compress($0, finish: false, sink: sink) } }
    try zeros.prefix(1024).withUnsafeBytes {
      try compressor.compress(UnsafeRawBufferPointer($0), finish: true, sink: sink)
    }
    try Data(compressed).write(to: URL(fileURLWithPath: path))
    #expect(compressed.count < 1 << 20)

    let out = temp.sub("out")
    await expectRefused("compression ratio exceeds") { try await Self.unpack(path, into: out, trust: trust) }
    #expect(!FileManager.default.fileExists(atPath: out))
    // With the ratio disabled, the size limit stops it at the entry's header.
    await expectRefused("model.onnx: declares 1073741824 bytes, beyond the limit") {
      try await Self.unpack(
        path, into: out, trust: trust, limits: UnpackLimits(maxTotalBytes: 64 << 20, maxCompressionRatio: .infinity))
    }
  }

  @Test("truncated archive") func truncated() async throws {
    let temp = try TempDir()
    let (dir, _, trust) = try await Self.signedBundle(in: temp)
    let archive = temp.sub("b.tar.zst")
    try BundlePacker.pack(directory: dir, to: archive)
    let bytes = try temp.read("b.tar.zst")
    try Data(bytes.prefix(bytes.count - 10)).write(to: URL(fileURLWithPath: archive))
    await #expect(throws: BundleError.self) { try await Self.unpack(archive, into: temp.sub("out"), trust: trust) }
    #expect(!FileManager.default.fileExists(atPath: temp.sub("out")))
  }

  @Test("packing refuses symlinks") func packSymlink() async throws {
    let temp = try TempDir()
    let (dir, _, _) = try await Self.signedBundle(in: temp)
    try FileManager.default.createSymbolicLink(atPath: temp.sub("bundle/link"), withDestinationPath: "/etc/passwd")
    #expect(throws: BundleError.self) { try BundlePacker.pack(directory: dir, to: temp.sub("x.tar.zst")) }
  }
}
