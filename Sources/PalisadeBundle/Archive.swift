import CZstd
import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Packs a bundle directory into a `.tar.zst`: POSIX ustar (regular files and directories only, owner 0, mtime 0,
/// modes 0644/0755, sorted: the same directory always gives the same archive), compressed with libzstd.
public enum BundlePacker {
  /// Packs every file below `directory` into `archive` (written to a temporary file, fsynced, renamed).
  /// Symlinks and special files are refused, as the verifier would refuse them.
  public static func pack(directory: String, to archive: String, compressionLevel: Int32 = 3) throws(BundleError) {
    let files = try FileTree.regularFiles(root: directory, excluding: []).sorted(by: RelativePath.omsOrder)
    let rootFD = try FileTree.openDirectory(directory)
    defer { close(rootFD) }

    let url = URL(fileURLWithPath: archive)
    let temp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).tmp-\(UUID().uuidString)").path
    let outFD = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
    guard outFD >= 0 else { throw BundleError.io(temp, "create", errno: errno) }
    var done = false
    defer {
      close(outFD)
      if !done { unlink(temp) }
    }
    let compressor = try ZstdCompressor(level: compressionLevel)
    let sink = { (chunk: UnsafeRawBufferPointer) throws(BundleError) in try FileTree.writeAll(fd: outFD, chunk, path: temp) }
    func emit(_ bytes: [UInt8], finish: Bool = false) throws(BundleError) {
      try BundleError.typed { try bytes.withUnsafeBytes { raw in try compressor.compress(raw, finish: finish, sink: sink) } }
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
        let n = read(fd, buffer.baseAddress, Int(min(Int64(buffer.count), remaining)))
        if n < 0 {
          if errno == EINTR { continue }
          throw BundleError.io(file.name, "read", errno: errno)
        }
        guard n > 0 else { throw BundleError(.io, "\(file): changed size while packing") }
        try compressor.compress(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), finish: false, sink: sink)
        remaining -= Int64(n)
      }
      let pad = Int((512 - size % 512) % 512)
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

  /// Output below this size is never refused for its ratio (tiny archives of text compress very well).
  public static let ratioFloorBytes: Int64 = 1 << 20

  public init(maxTotalBytes: Int64 = 8 << 30, maxFiles: Int = 10_000, maxPathLength: Int = 255, maxCompressionRatio: Double = 200) {
    self.maxTotalBytes = maxTotalBytes
    self.maxFiles = maxFiles
    self.maxPathLength = maxPathLength
    self.maxCompressionRatio = maxCompressionRatio
  }
}

/// Expands a packed bundle into a new private directory, refusing anything unsafe before it is written.
public enum BundleUnpacker {
  /// What was extracted.
  public struct Result: Sendable {
    public let directory: String
    public let files: Int
    public let directories: Int
    public let totalBytes: Int64
  }

  /// Extracts `archive` into `directory`, which must not exist; it is created with mode 0700, files are written
  /// 0600 and made 0400 once complete. On any error the partial directory is removed.
  ///
  /// Refused: absolute paths, `..` or empty components, links, devices, FIFOs, pax/GNU extensions, non-ustar
  /// headers, bad checksums, duplicates, and anything beyond `limits`.
  @discardableResult
  public static func unpack(archive: String, into directory: String, limits: UnpackLimits = UnpackLimits()) throws(BundleError) -> Result {
    let inFD = open(archive, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
    guard inFD >= 0 else { throw BundleError.io(archive, "open", errno: errno) }
    defer { close(inFD) }
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
    while true {
      let n = read(inFD, inBuffer.baseAddress, inCap)
      if n < 0 {
        if errno == EINTR { continue }
        throw BundleError.io(archive, "read", errno: errno)
      }
      if n == 0 { break }
      if first {
        first = false
        if let declared = ZstdDecompressor.declaredContentSize(UnsafeRawBufferPointer(rebasing: inBuffer[0..<n])),
          declared > UInt64(max(0, limits.maxTotalBytes))
        {
          throw BundleError(.unsafeArchive, "archive: declares \(declared) bytes, over the limit of \(limits.maxTotalBytes)")
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
          if produced > UnpackLimits.ratioFloorBytes, Double(produced) > limits.maxCompressionRatio * Double(max(consumed, 1)) {
            throw BundleError(
              .unsafeArchive, "archive: compression ratio exceeds \(limits.maxCompressionRatio) (possible zstd bomb)")
          }
          try reader.consume(UnsafeRawBufferPointer(rebasing: outBuffer[0..<out]))
        }
        if input.pos == input.size && out < outCap { break }
      }
    }
    guard lastHint == 0 else { throw BundleError(.unsafeArchive, "archive: truncated zstd stream") }
    let stats = try reader.finish()
    succeeded = true
    return Result(directory: directory, files: stats.files, directories: stats.directories, totalBytes: produced)
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
        let cut = trimmed.indices.reversed().first(where: { trimmed[$0] == UInt8(ascii: "/") && $0 <= 155 && bytes.count - $0 - 1 <= 100 })
      else {
        throw BundleError(.invalidInput, "\(path): path too long for a ustar archive")
      }
      prefix = Array(bytes[..<cut])
      name = Array(bytes[(cut + 1)...])
    }
    guard size >= 0, size < 0o77777777777 else { throw BundleError(.invalidInput, "\(path): too large for a ustar archive") }
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
    guard let linkName = stringField(h[157..<257]), linkName.isEmpty else { throw refuse("\(display): entry has a link target") }
    guard let size = octalField(h[124..<136]) else { throw refuse("\(display): unreadable size field") }
    guard full.count <= limits.maxPathLength else {
      throw refuse("\(display): path longer than \(limits.maxPathLength) bytes")
    }
    guard !full.isEmpty else { throw refuse("entry with an empty path") }
    guard full.first != UInt8(ascii: "/") else { throw refuse("\(display): absolute paths are not allowed") }
    guard let text = String(validating: full, as: UTF8.self) else { throw refuse("\(display): path is not valid UTF-8") }
    guard !full.contains(where: { $0 < 0x20 || $0 == 0x7F }) else { throw refuse("\(display): control character in path") }
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

/// Consumes the decompressed tar stream and writes entries under `rootFD`.
struct TarExtractor {
  private enum State {
    case header
    case data(fd: Int32, path: RelativePath, remaining: Int64, padding: Int)
    case padding(Int)
    case end
  }

  private let rootFD: Int32
  private let limits: UnpackLimits
  private var state = State.header
  private var headerBuffer: [UInt8] = []
  private var zeroBlocks = 0
  private var entries = 0
  private var files = 0
  private var directories = 0
  private var seen = Set<RelativePath>()

  init(rootFD: Int32, limits: UnpackLimits) {
    self.rootFD = rootFD
    self.limits = limits
  }

  /// Closes an open file if extraction stops midway.
  mutating func abandon() {
    if case .data(let fd, _, _, _) = state {
      close(fd)
      state = .end
    }
  }

  mutating func consume(_ chunk: UnsafeRawBufferPointer) throws(BundleError) {
    var offset = 0
    while offset < chunk.count {
      switch state {
      case .header:
        let take = min(Tar.block - headerBuffer.count, chunk.count - offset)
        headerBuffer.append(contentsOf: chunk[offset..<offset + take])
        offset += take
        if headerBuffer.count == Tar.block {
          let block = headerBuffer
          headerBuffer.removeAll(keepingCapacity: true)
          try handleHeader(block)
        }
      case .data(let fd, let path, let remaining, let padding):
        let take = Int(min(Int64(chunk.count - offset), remaining))
        try FileTree.writeAll(fd: fd, chunk[offset..<offset + take], path: path.name)
        offset += take
        let left = remaining - Int64(take)
        if left == 0 {
          fchmod(fd, 0o400)
          close(fd)
          state = padding > 0 ? .padding(padding) : .header
        } else {
          state = .data(fd: fd, path: path, remaining: left, padding: padding)
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
    guard entries <= limits.maxFiles else { throw BundleError(.unsafeArchive, "archive: more than \(limits.maxFiles) entries") }
    guard seen.insert(entry.path).inserted || entry.kind == .directory else {
      throw BundleError(.unsafeArchive, "archive: \(entry.path): duplicate entry")
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
        guard errno == EEXIST, fstatat(parent, last, &st, AT_SYMLINK_NOFOLLOW) == 0, (st.st_mode & S_IFMT) == S_IFDIR else {
          throw BundleError(.unsafeArchive, "archive: \(entry.path): cannot create directory")
        }
      }
      state = .header
    case .file:
      files += 1
      let fd = openat(parent, last, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
      guard fd >= 0 else {
        if errno == EEXIST { throw BundleError(.unsafeArchive, "archive: \(entry.path): duplicate entry") }
        throw BundleError.io(entry.path.name, "create", errno: errno)
      }
      let padding = Int((512 - entry.size % 512) % 512)
      if entry.size == 0 {
        fchmod(fd, 0o400)
        close(fd)
        state = .header
      } else {
        state = .data(fd: fd, path: entry.path, remaining: entry.size, padding: padding)
      }
    }
  }

  /// Opens (creating 0700 as needed) the parent directory of `path`, never following a symlink.
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
    case .end: return (files, directories)
    case .header where zeroBlocks == 1 && headerBuffer.isEmpty:
      // One zero block then EOF: tolerated by most readers, but we write two; refuse the oddity.
      throw BundleError(.unsafeArchive, "archive: incomplete end-of-archive marker")
    default:
      throw BundleError(.unsafeArchive, "archive: truncated tar stream")
    }
  }
}
