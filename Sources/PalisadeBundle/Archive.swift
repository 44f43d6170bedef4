import CZstd
import Crypto
public import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Packs a signed bundle directory into a `.tar.zst`: POSIX ustar (regular files and directories only, owner 0,
/// mtime 0, modes 0644/0755), compressed with libzstd. `model.sig` is the first entry, so that an unpacker can verify
/// the signature before it writes anything else; the signed files follow in OMS order (the same directory always
/// gives the same archive). The default ignore paths (`.git`, `.gitattributes`, `.github`, `.gitignore`) are not
/// packed: they are not covered by the signature, and the unpacker refuses every file the signature does not list.
public enum BundlePacker {
  /// Packs `directory` into `archive` (written to a temporary file, fsynced, renamed).
  /// Symlinks and special files are refused, as the verifier would refuse them; so is a directory without `model.sig`.
  public static func pack(directory: String, to archive: String, compressionLevel: Int32 = 3) throws(BundleError) {
    let rootFD = try FileTree.openDirectory(directory)
    defer { close(rootFD) }
    let signature = RelativePath(components: [OMS.signatureFileName])
    let signed = try FileTree.regularFiles(rootFD: rootFD, label: directory, excluding: defaultIgnorePaths.map { [$0] })
      .sorted(by: RelativePath.omsOrder)
    var st = stat()
    guard fstatat(rootFD, OMS.signatureFileName, &st, AT_SYMLINK_NOFOLLOW) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
      throw BundleError(
        .invalidInput, "\(directory): \(OMS.signatureFileName) is missing (sign the bundle before packing it)")
    }
    let files = [signature] + signed

    let url = URL(fileURLWithPath: archive)
    let temp = url.deletingLastPathComponent().appendingPathComponent(
      ".\(url.lastPathComponent).tmp-\(UUID().uuidString)"
    ).path
    let outFD = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
    guard outFD >= 0 else { throw BundleError.io(temp, "create", errno: errno) }
    var done = false
    defer {
      close(outFD)
      if !done { unlink(temp) }
    }
    let compressor = try ZstdCompressor(level: compressionLevel)
    let sink = { (chunk: UnsafeRawBufferPointer) throws(BundleError) in
      try FileTree.writeAll(fd: outFD, chunk, path: temp)
    }
    func emit(_ bytes: [UInt8], finish: Bool = false) throws(BundleError) {
      try BundleError.typed {
        try bytes.withUnsafeBytes { raw in try compressor.compress(raw, finish: finish, sink: sink) }
      }
    }

    var emittedDirs = Set<RelativePath>()
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: FileTree.chunkSize, alignment: 16)
    defer { buffer.deallocate() }
    for file in files {
      for depth in 1..<max(1, file.components.count) {
        let dir = RelativePath(components: Array(file.components.prefix(depth)))
        if emittedDirs.insert(dir).inserted {
          try emit(try Tar.header(path: dir.name + "/", size: 0, directory: true))
        }
      }
      let (fd, size) = try FileTree.openRegularFile(rootFD: rootFD, file)
      defer { close(fd) }
      try emit(try Tar.header(path: file.name, size: size, directory: false))
      var remaining = size
      while remaining > 0 {
        let n = read(fd, buffer.baseAddress, Int(clamping: min(Int64(buffer.count), remaining)))
        if n < 0 {
          if errno == EINTR { continue }
          throw BundleError.io(file.name, "read", errno: errno)
        }
        guard n > 0 else { throw BundleError(.io, "\(file): changed size while packing") }
        try compressor.compress(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), finish: false, sink: sink)
        remaining -= Int64(n)
      }
      let pad = Tar.padding(size)
      if pad > 0 { try emit([UInt8](repeating: 0, count: pad)) }
    }
    // End of archive: two zero blocks.
    try emit([UInt8](repeating: 0, count: 1024), finish: true)
    guard fsync(outFD) == 0 else { throw BundleError.io(temp, "fsync", errno: errno) }
    guard rename(temp, archive) == 0 else { throw BundleError.io(archive, "rename", errno: errno) }
    done = true
  }
}

/// Limits applied while a `.tar.zst` is expanded; each is checked as bytes come out of the decompressor, so an
/// archive that would exceed one stops early.
public struct UnpackLimits: Sendable, Hashable {
  /// Total decompressed bytes (tar headers and padding included).
  public var maxTotalBytes: Int64
  /// Entries (files and directories).
  public var maxFiles: Int
  /// Bytes in one entry's path.
  public var maxPathLength: Int
  /// Decompressed bytes per compressed byte consumed (checked once more than `ratioFloorBytes` came out).
  public var maxCompressionRatio: Double
  /// Bytes of the leading `model.sig` entry, held in memory until its signature verified.
  public var maxSignatureBytes: Int

  /// Output below this size is never refused for its ratio (tiny archives of text compress very well).
  public static let ratioFloorBytes: Int64 = 1 << 20

  public init(
    maxTotalBytes: Int64 = 8 << 30, maxFiles: Int = 10_000, maxPathLength: Int = 255, maxCompressionRatio: Double = 200,
    maxSignatureBytes: Int = 4 << 20
  ) {
    self.maxTotalBytes = maxTotalBytes
    self.maxFiles = maxFiles
    self.maxPathLength = maxPathLength
    self.maxCompressionRatio = maxCompressionRatio
    self.maxSignatureBytes = maxSignatureBytes
  }
}

/// Expands a packed bundle into a new private directory, verifying its signature before anything but that signature
/// is written, and refusing anything unsafe or unsigned before it is written.
///
/// The archive's first entry must be `model.sig` (as `BundlePacker` writes it). It is read into memory (at most
/// `UnpackLimits.maxSignatureBytes`) and verified exactly as `BundleVerifier` does (trust rule for the model name,
/// signer, signature, payload). Only then is anything written: every later entry must be a file the signature lists
/// (or a directory above one), at most once, within the size limits; each file is hashed as it is written and
/// refused at its end if its digest differs from the signed one; at the end every signed file must have come. So an
/// archive without a valid signature from a trusted signer writes nothing, and one with a valid signature writes only
/// the signed names, at most `maxTotalBytes` in all.
public enum BundleUnpacker {
  /// What was extracted.
  public struct Result: Sendable {
    public let directory: String
    public let files: Int
    public let directories: Int
    public let totalBytes: Int64
    /// Who signed the archive's `model.sig`.
    public let signer: SignerDescription
    /// The signed root digest (lowercase hex).
    public let rootDigest: String
  }

  /// Extracts `archive` into `directory`, which must not exist; it is created with mode 0700, files are written
  /// 0600 and made 0400 once complete. On any error the partial directory is removed.
  ///
  /// - Parameters:
  ///   - trust, modelName, now: as for `BundleVerifier.verify`; the leading `model.sig` must verify under them.
  ///
  /// Refused: a first entry other than `model.sig`, a signature that does not verify, entries the signature does not
  /// list, digests that differ, missing signed files, absolute paths, `..` or empty components, links, devices, FIFOs,
  /// pax/GNU extensions, non-ustar headers, bad checksums, duplicates, and anything beyond `limits`.
  @discardableResult
  public static func unpack(
    archive: String, into directory: String, trust: TrustPolicy, modelName: String?, now: Date = Date(),
    limits: UnpackLimits = UnpackLimits()
  ) async throws(BundleError) -> Result {
    let inFD = open(archive, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
    guard inFD >= 0 else { throw BundleError.io(archive, "open", errno: errno) }
    defer { close(inFD) }
    var st = stat()
    guard fstat(inFD, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
      throw BundleError(.unsafeArchive, "\(archive): not a regular file")
    }
    guard mkdir(directory, 0o700) == 0 else { throw BundleError.io(directory, "mkdir", errno: errno) }
    var succeeded = false
    defer {
      if !succeeded { try? FileManager.default.removeItem(atPath: directory) }
    }
    let rootFD = try FileTree.openDirectory(directory)
    defer { close(rootFD) }
    var reader = TarExtractor(rootFD: rootFD, limits: limits)
    defer { reader.abandon() }

    let decompressor = try ZstdDecompressor()
    let inCap = ZstdDecompressor.inputChunk
    let outCap = ZstdDecompressor.outputChunk
    let inBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: inCap, alignment: 16)
    let outBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: outCap, alignment: 16)
    defer {
      inBuffer.deallocate()
      outBuffer.deallocate()
    }
    var consumed: Int64 = 0
    var produced: Int64 = 0
    var lastHint = -1
    var first = true
    var verified: BundleVerifier.SignatureCheck? = nil
    while true {
      let n = read(inFD, inBuffer.baseAddress, inCap)
      if n < 0 {
        if errno == EINTR || errno == EAGAIN { continue }
        throw BundleError.io(archive, "read", errno: errno)
      }
      if n == 0 { break }
      if first {
        first = false
        if let declared = ZstdDecompressor.declaredContentSize(UnsafeRawBufferPointer(rebasing: inBuffer[0..<n])),
          declared > UInt64(clamping: limits.maxTotalBytes)
        {
          throw BundleError(
            .unsafeArchive, "archive: declares \(declared) bytes, over the limit of \(limits.maxTotalBytes)")
        }
      }
      var input = ZSTD_inBuffer(src: inBuffer.baseAddress, size: n, pos: 0)
      // Drain this input chunk completely (and any output zstd still holds for it).
      while true {
        let before = input.pos
        let (out, hint) = try decompressor.step(&input, into: outBuffer)
        consumed += Int64(input.pos - before)
        lastHint = hint
        if out > 0 {
          produced += Int64(out)
          guard produced <= limits.maxTotalBytes else {
            throw BundleError(.unsafeArchive, "archive: expands beyond the limit of \(limits.maxTotalBytes) bytes")
          }
          if produced > UnpackLimits.ratioFloorBytes,
            Double(produced) > limits.maxCompressionRatio * Double(max(consumed, 1))
          {
            throw BundleError(
              .unsafeArchive, "archive: compression ratio exceeds \(limits.maxCompressionRatio) (possible zstd bomb)")
          }
          var chunk = UnsafeRawBufferPointer(rebasing: outBuffer[0..<out])
          while !chunk.isEmpty {
            let used = try reader.consume(chunk)
            chunk = UnsafeRawBufferPointer(rebasing: chunk[used...])
            if let signature = reader.pendingSignature {
              // Nothing but this signature has been read into memory, and nothing at all written.
              let check = try await BundleVerifier.checkSignature(
                signature, trust: trust, modelName: modelName, now: now)
              try reader.accept(check, signature: signature)
              verified = check
            }
          }
        }
        if input.pos == input.size && out < outCap { break }
      }
    }
    guard lastHint == 0 else { throw BundleError(.unsafeArchive, "archive: truncated zstd stream") }
    let stats = try reader.finish()
    guard let verified else { throw BundleError(.malformedSignature, "archive: \(OMS.signatureFileName) is missing") }
    succeeded = true
    return Result(
      directory: directory, files: stats.files, directories: stats.directories, totalBytes: produced,
      signer: verified.signer, rootDigest: Hex.encode(verified.statement.rootDigest))
  }
}

/// ustar header encoding and decoding.
enum Tar {
  static let block = 512

  /// A POSIX ustar header for a regular file or directory.
  static func header(path: String, size: Int64, directory: Bool) throws(BundleError) -> [UInt8] {
    var h = [UInt8](repeating: 0, count: block)
    let bytes = Array(path.utf8)
    var name = bytes
    var prefix: [UInt8] = []
    if bytes.count > 100 {
      // Split at a '/' so that the prefix fits 155 bytes and the name 100.
      let trimmed = directory ? Array(bytes.dropLast()) : bytes
      guard
        let cut = trimmed.indices.reversed().first(where: {
          trimmed[$0] == UInt8(ascii: "/") && $0 <= 155 && bytes.count - $0 - 1 <= 100
        })
      else {
        throw BundleError(.invalidInput, "\(path): path too long for a ustar archive")
      }
      prefix = Array(bytes[..<cut])
      name = Array(bytes[(cut + 1)...])
    }
    guard size >= 0, size < 0o77777777777 else {
      throw BundleError(.invalidInput, "\(path): too large for a ustar archive")
    }
    func put(_ field: [UInt8], at offset: Int) { for (i, b) in field.enumerated() { h[offset + i] = b } }
    func octal(_ value: Int64, width: Int) -> [UInt8] {
      let digits = String(value, radix: 8)
      return Array((String(repeating: "0", count: max(0, width - 1 - digits.count)) + digits).utf8) + [0]
    }
    put(name, at: 0)
    put(octal(directory ? 0o755 : 0o644, width: 8), at: 100)
    put(octal(0, width: 8), at: 108)
    put(octal(0, width: 8), at: 116)
    put(octal(directory ? 0 : size, width: 12), at: 124)
    put(octal(0, width: 12), at: 136)
    h[156] = directory ? UInt8(ascii: "5") : UInt8(ascii: "0")
    put(Array("ustar".utf8) + [0], at: 257)
    put(Array("00".utf8), at: 263)
    put(octal(0, width: 8), at: 329)
    put(octal(0, width: 8), at: 337)
    put(prefix, at: 345)
    put([UInt8](repeating: 0x20, count: 8), at: 148)
    let sum = h.reduce(0) { $0 + Int64($1) }
    put(octal(sum, width: 7) + [0x20], at: 148)
    return h
  }

  /// Zero bytes after `size` bytes of data, up to the next block.
  static func padding(_ size: Int64) -> Int {
    Int(truncatingIfNeeded: (Int64(block) - size % Int64(block)) % Int64(block))
  }

  /// A decoded, validated header.
  struct Entry {
    enum Kind { case file, directory }
    let kind: Kind
    let path: RelativePath
    let size: Int64
  }

  /// Parses a numeric field: octal digits, optionally space-padded on the left, ended by NUL or space.
  static func octalField(_ h: ArraySlice<UInt8>) -> Int64? {
    var value: Int64 = 0
    var seenDigit = false
    var ended = false
    for b in h {
      if ended {
        guard b == 0 || b == 0x20 else { return nil }
        continue
      }
      switch b {
      case UInt8(ascii: "0")...UInt8(ascii: "7"):
        guard value < (Int64.max >> 3) else { return nil }
        value = value << 3 | Int64(b - UInt8(ascii: "0"))
        seenDigit = true
      case 0x20 where !seenDigit:
        continue
      case 0, 0x20:
        ended = true
      default:
        return nil  // includes the GNU base-256 form (high bit set)
      }
    }
    return seenDigit ? value : nil
  }

  /// A NUL-terminated (or full-width) string field; bytes after the NUL must be NUL.
  static func stringField(_ h: ArraySlice<UInt8>) -> [UInt8]? {
    guard let end = h.firstIndex(of: 0) else { return Array(h) }
    guard h[end...].allSatisfy({ $0 == 0 }) else { return nil }
    return Array(h[h.startIndex..<end])
  }

  static func parse(_ h: [UInt8], limits: UnpackLimits) throws(BundleError) -> Entry {
    func refuse(_ why: String) -> BundleError { BundleError(.unsafeArchive, "archive: \(why)") }
    guard let recorded = octalField(h[148..<156]) else { throw refuse("unreadable header checksum") }
    var sum: Int64 = 0
    for (i, b) in h.enumerated() { sum += (148..<156).contains(i) ? 0x20 : Int64(b) }
    guard sum == recorded else { throw refuse("header checksum mismatch") }
    guard Array(h[257..<263]) == Array("ustar".utf8) + [0], Array(h[263..<265]) == Array("00".utf8) else {
      throw refuse("not a POSIX ustar header (GNU/v7/other formats are refused)")
    }
    guard let nameBytes = stringField(h[0..<100]), let prefixBytes = stringField(h[345..<500]) else {
      throw refuse("malformed name field")
    }
    var full = prefixBytes.isEmpty ? nameBytes : prefixBytes + [UInt8(ascii: "/")] + nameBytes
    let display = String(decoding: full.prefix(200), as: UTF8.self)
    let type = h[156]
    switch type {
    case UInt8(ascii: "0"), 0: break
    case UInt8(ascii: "5"): break
    case UInt8(ascii: "1"): throw refuse("\(display): hard links are not allowed")
    case UInt8(ascii: "2"): throw refuse("\(display): symbolic links are not allowed")
    case UInt8(ascii: "3"), UInt8(ascii: "4"): throw refuse("\(display): device entries are not allowed")
    case UInt8(ascii: "6"): throw refuse("\(display): FIFO entries are not allowed")
    case UInt8(ascii: "7"): throw refuse("\(display): contiguous-file entries are not allowed")
    case UInt8(ascii: "x"), UInt8(ascii: "g"): throw refuse("\(display): pax extended headers are not supported")
    case UInt8(ascii: "L"), UInt8(ascii: "K"): throw refuse("\(display): GNU long-name entries are not supported")
    default: throw refuse("\(display): unsupported entry type '\(String(UnicodeScalar(type)))'")
    }
    guard let linkName = stringField(h[157..<257]), linkName.isEmpty else {
      throw refuse("\(display): entry has a link target")
    }
    guard let size = octalField(h[124..<136]) else { throw refuse("\(display): unreadable size field") }
    guard full.count <= limits.maxPathLength else {
      throw refuse("\(display): path longer than \(limits.maxPathLength) bytes")
    }
    guard !full.isEmpty else { throw refuse("entry with an empty path") }
    guard full.first != UInt8(ascii: "/") else { throw refuse("\(display): absolute paths are not allowed") }
    guard let text = String(validating: full, as: UTF8.self) else {
      throw refuse("\(display): path is not valid UTF-8")
    }
    guard !full.contains(where: { $0 < 0x20 || $0 == 0x7F }) else {
      throw refuse("\(display): control character in path")
    }
    let isDir = type == UInt8(ascii: "5")
    var parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    if isDir, parts.count > 1, parts.last == "" { parts.removeLast() }
    // `tar -C dir .` writes "./x"; accept that one leading "." and nothing else unusual.
    if parts.count > 1, parts.first == "." { parts.removeFirst() }
    for part in parts {
      if part == ".." { throw refuse("\(display): '..' path components are not allowed") }
      if part.isEmpty || part == "." { throw refuse("\(display): empty or '.' path component") }
    }
    if isDir { guard size == 0 else { throw refuse("\(display): directory entry with a size") } }
    if !isDir, text.hasSuffix("/") { throw refuse("\(display): file entry ending in '/'") }
    full = []
    return Entry(kind: isDir ? .directory : .file, path: RelativePath(components: parts), size: size)
  }
}

/// Consumes the decompressed tar stream and writes entries under `rootFD`: the leading `model.sig` is held in
/// memory (`pendingSignature`) until the caller verified it (`accept`); after that only signed files are written.
struct TarExtractor {
  private enum State {
    case header
    /// Reading the leading `model.sig` into memory.
    case signature(remaining: Int, padding: Int)
    /// `model.sig` read; waiting for `accept`. Then `padding` bytes before the next header.
    case awaitingVerification(padding: Int)
    case data(fd: Int32, path: RelativePath, remaining: Int64, padding: Int, hasher: SHA256, expected: [UInt8])
    case padding(Int)
    case end
  }

  private let rootFD: Int32
  private let limits: UnpackLimits
  private var state = State.header
  private var headerBuffer: [UInt8] = []
  private var signatureBytes: [UInt8] = []
  private var zeroBlocks = 0
  private var entries = 0
  private var files = 0
  private var directories = 0
  private var declaredBytes: Int64 = 0
  private var seen = Set<RelativePath>()
  /// Set by `accept`: the signed files and their digests, and every directory above one.
  private var signed: [RelativePath: [UInt8]]? = nil
  private var signedOrder: [RelativePath] = []
  private var signedDirectories = Set<RelativePath>()

  init(rootFD: Int32, limits: UnpackLimits) {
    self.rootFD = rootFD
    self.limits = limits
  }

  /// The complete `model.sig`, once read and until it is accepted.
  var pendingSignature: [UInt8]? {
    if case .awaitingVerification = state { return signatureBytes }
    return nil
  }

  /// Closes an open file if extraction stops midway.
  mutating func abandon() {
    if case .data(let fd, _, _, _, _, _) = state {
      close(fd)
      state = .end
    }
  }

  /// Continues after the caller verified `model.sig`: writes it, and from now on admits exactly the signed files.
  mutating func accept(_ check: BundleVerifier.SignatureCheck, signature: [UInt8]) throws(BundleError) {
    guard case .awaitingVerification(let padding) = state else {
      throw BundleError(.unsafeArchive, "archive: no signature is waiting to be accepted")
    }
    var map: [RelativePath: [UInt8]] = [:]
    for r in check.statement.resources {
      map[r.path] = r.digest
      for depth in 1..<max(1, r.path.components.count) {
        signedDirectories.insert(RelativePath(components: Array(r.path.components.prefix(depth))))
      }
    }
    signed = map
    signedOrder = check.statement.resources.map(\.path)
    let name = OMS.signatureFileName
    let fd = openat(rootFD, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw BundleError.io(name, "create", errno: errno) }
    defer { close(fd) }
    try FileTree.writeAll(fd: fd, signature, path: name)
    fchmod(fd, 0o400)
    files += 1
    signatureBytes = []
    state = padding > 0 ? .padding(padding) : .header
  }

  /// Consumes from `chunk` and returns how many bytes were used: all of them, unless the end of `model.sig` was
  /// reached (then `pendingSignature` is set and nothing more is consumed until `accept`).
  mutating func consume(_ chunk: UnsafeRawBufferPointer) throws(BundleError) -> Int {
    var offset = 0
    while offset < chunk.count {
      switch state {
      case .awaitingVerification:
        return offset
      case .header:
        let take = min(Tar.block - headerBuffer.count, chunk.count - offset)
        headerBuffer.append(contentsOf: chunk[offset..<offset + take])
        offset += take
        if headerBuffer.count == Tar.block {
          let block = headerBuffer
          headerBuffer.removeAll(keepingCapacity: true)
          try handleHeader(block)
        }
      case .signature(let remaining, let padding):
        let take = min(chunk.count - offset, remaining)
        signatureBytes.append(contentsOf: chunk[offset..<offset + take])
        offset += take
        if remaining - take == 0 {
          state = .awaitingVerification(padding: padding)
          return offset
        }
        state = .signature(remaining: remaining - take, padding: padding)
      case .data(let fd, let path, let remaining, let padding, var hasher, let expected):
        let take = Int(clamping: min(Int64(chunk.count - offset), remaining))
        let piece = UnsafeRawBufferPointer(rebasing: chunk[offset..<offset + take])
        hasher.update(bufferPointer: piece)
        try FileTree.writeAll(fd: fd, piece, path: path.name)
        offset += take
        let left = remaining - Int64(take)
        if left == 0 {
          fchmod(fd, 0o400)
          close(fd)
          state = .end  // the descriptor is closed: nothing for `abandon` to close if the digest is refused
          guard Array(hasher.finalize()) == expected else {
            throw BundleError(
              .contentMismatch, "archive: \(path): digest mismatch (does not match \(OMS.signatureFileName))")
          }
          state = padding > 0 ? .padding(padding) : .header
        } else {
          state = .data(fd: fd, path: path, remaining: left, padding: padding, hasher: hasher, expected: expected)
        }
      case .padding(let n):
        let take = min(n, chunk.count - offset)
        offset += take
        state = n - take > 0 ? .padding(n - take) : .header
      case .end:
        // After the end-of-archive marker only zero padding may follow.
        for i in offset..<chunk.count where chunk[i] != 0 {
          throw BundleError(.unsafeArchive, "archive: data after the end-of-archive marker")
        }
        offset = chunk.count
      }
    }
    return offset
  }

  private mutating func handleHeader(_ block: [UInt8]) throws(BundleError) {
    if block.allSatisfy({ $0 == 0 }) {
      zeroBlocks += 1
      if zeroBlocks == 2 { state = .end }
      return
    }
    guard zeroBlocks == 0 else { throw BundleError(.unsafeArchive, "archive: entry after a zero block") }
    let entry = try Tar.parse(block, limits: limits)
    entries += 1
    guard entries <= limits.maxFiles else {
      throw BundleError(.unsafeArchive, "archive: more than \(limits.maxFiles) entries")
    }

    guard let signed else {
      // The first entry: model.sig, kept in memory until the caller verified it. Nothing is written before.
      guard entry.kind == .file, entry.path.components == [OMS.signatureFileName] else {
        throw BundleError(
          .unsafeArchive,
          "archive: the first entry must be \(OMS.signatureFileName), found '\(entry.path)' (pack bundles with `palisade bundle pack`)"
        )
      }
      guard entry.size <= Int64(limits.maxSignatureBytes), let size = Int(exactly: entry.size) else {
        throw BundleError(
          .unsafeArchive, "archive: \(OMS.signatureFileName) is larger than \(limits.maxSignatureBytes) bytes")
      }
      seen.insert(entry.path)
      signatureBytes.reserveCapacity(size)
      let padding = Tar.padding(entry.size)
      if size == 0 {
        state = .awaitingVerification(padding: padding)
      } else {
        state = .signature(remaining: size, padding: padding)
      }
      return
    }

    switch entry.kind {
    case .directory:
      guard signedDirectories.contains(entry.path) else {
        throw BundleError(.unsafeArchive, "archive: \(entry.path)/: not a directory of any signed file")
      }
    case .file:
      guard seen.insert(entry.path).inserted else {
        throw BundleError(.unsafeArchive, "archive: \(entry.path): duplicate entry")
      }
      guard signed[entry.path] != nil else {
        throw BundleError(.unsafeArchive, "archive: \(entry.path): not in the signed file set")
      }
      let (total, overflow) = declaredBytes.addingReportingOverflow(entry.size)
      guard !overflow, total <= limits.maxTotalBytes else {
        throw BundleError(
          .unsafeArchive,
          "archive: \(entry.path): declares \(entry.size) bytes, beyond the limit of \(limits.maxTotalBytes) in all")
      }
      declaredBytes = total
    }
    let parent = try openParent(of: entry.path)
    defer { if parent != rootFD { close(parent) } }
    let last = entry.path.components.last ?? ""
    switch entry.kind {
    case .directory:
      directories += 1
      if mkdirat(parent, last, 0o700) != 0 {
        // Implied earlier by a file below it: fine if it is our directory.
        var st = stat()
        guard errno == EEXIST, fstatat(parent, last, &st, AT_SYMLINK_NOFOLLOW) == 0, (st.st_mode & S_IFMT) == S_IFDIR
        else {
          throw BundleError(.unsafeArchive, "archive: \(entry.path): cannot create directory")
        }
      }
      state = .header
    case .file:
      files += 1
      let expected = signed[entry.path] ?? []
      let fd = openat(parent, last, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
      guard fd >= 0 else {
        if errno == EEXIST { throw BundleError(.unsafeArchive, "archive: \(entry.path): duplicate entry") }
        throw BundleError.io(entry.path.name, "create", errno: errno)
      }
      let padding = Tar.padding(entry.size)
      if entry.size == 0 {
        fchmod(fd, 0o400)
        close(fd)
        guard Array(SHA256.hash(data: [UInt8]())) == expected else {
          throw BundleError(
            .contentMismatch, "archive: \(entry.path): digest mismatch (does not match \(OMS.signatureFileName))")
        }
        state = .header
      } else {
        state = .data(
          fd: fd, path: entry.path, remaining: entry.size, padding: padding, hasher: SHA256(), expected: expected)
      }
    }
  }

  /// Opens the parent directory of `path` (which must already exist: a signed file's directories come before it, or
  /// are created here 0700), never following a symlink.
  private func openParent(of path: RelativePath) throws(BundleError) -> Int32 {
    var fd = rootFD
    for component in path.components.dropLast() {
      if mkdirat(fd, component, 0o700) != 0 && errno != EEXIST {
        let code = errno
        if fd != rootFD { close(fd) }
        throw BundleError.io(path.name, "mkdir", errno: code)
      }
      let next = openat(fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
      if fd != rootFD { close(fd) }
      guard next >= 0 else { throw BundleError(.unsafeArchive, "archive: \(path): a parent is not a directory") }
      fd = next
    }
    return fd
  }

  mutating func finish() throws(BundleError) -> (files: Int, directories: Int) {
    switch state {
    case .end:
      guard let signed else { throw BundleError(.malformedSignature, "archive: \(OMS.signatureFileName) is missing") }
      if let missing = signedOrder.first(where: { signed[$0] != nil && !seen.contains($0) }) {
        throw BundleError(.contentMismatch, "archive: \(missing): signed file is missing")
      }
      return (files, directories)
    case .header where zeroBlocks == 1 && headerBuffer.isEmpty:
      // One zero block then EOF: tolerated by most readers, but we write two; refuse the oddity.
      throw BundleError(.unsafeArchive, "archive: incomplete end-of-archive marker")
    default:
      throw BundleError(.unsafeArchive, "archive: truncated tar stream")
    }
  }
}
