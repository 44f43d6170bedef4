import Crypto
import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A `/`-separated path relative to a bundle root, compared and hashed by its exact UTF-8 bytes.
///
/// Why bytes: Swift `String` equality is Unicode canonical equivalence, so an NFD and an NFC spelling of a name would
/// compare equal; the signature format (and the file system) treat them as different names.
struct RelativePath: Hashable, Sendable, CustomStringConvertible {
  let components: [String]
  let bytes: [UInt8]

  init(components: [String]) {
    self.components = components
    self.bytes = Array(components.joined(separator: "/").utf8)
  }

  var name: String { components.joined(separator: "/") }
  var description: String { name }

  static func == (lhs: RelativePath, rhs: RelativePath) -> Bool { lhs.bytes == rhs.bytes }
  func hash(into hasher: inout Hasher) { hasher.combine(bytes) }

  /// The OMS resource order: component by component, each by Unicode code point (UTF-8 byte order is the same).
  static func omsOrder(_ a: RelativePath, _ b: RelativePath) -> Bool {
    for (x, y) in zip(a.components, b.components) {
      let xb = Array(x.utf8)
      let yb = Array(y.utf8)
      if xb != yb { return xb.lexicographicallyPrecedes(yb) }
    }
    return a.components.count < b.components.count
  }

  /// True if this path equals `prefix` or lies below it (whole components).
  func isEqualOrBelow(_ prefix: [String]) -> Bool {
    guard prefix.count <= components.count else { return false }
    for (x, y) in zip(prefix, components) where Array(x.utf8) != Array(y.utf8) { return false }
    return true
  }

  /// Parses a signed resource name: relative, `/`-separated, no empty, `.` or `..` components, valid for a file name.
  static func parseSigned(_ name: String) -> RelativePath? {
    guard !name.isEmpty, !name.utf8.contains(0) else { return nil }
    let parts = name.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    for part in parts where part.isEmpty || part == "." || part == ".." { return nil }
    return RelativePath(components: parts)
  }
}

/// The default OMS ignore list; our verifier accepts no other entries in a signature's `ignore_paths`.
public let defaultIgnorePaths: [String] = [".git", ".gitattributes", ".github", ".gitignore", "model.sig"]

enum FileTree {
  /// Limits on what we are willing to walk; a bundle is a handful of files, these only stop abuse.
  static let maxDepth = 32
  static let maxEntries = 100_000

  /// Lists every regular file below `root` except those at or below an `excluded` path.
  ///
  /// Everything is inspected, excluded paths included: a symlink, FIFO, socket or device anywhere is refused, and
  /// so is a name that is not valid UTF-8. Directories are opened with `O_NOFOLLOW`, so a directory swapped for a
  /// symlink during the walk is refused too.
  static func regularFiles(root: String, excluding excluded: [[String]]) throws(BundleError) -> [RelativePath] {
    let rootFD = try openDirectory(root)
    defer { close(rootFD) }
    return try regularFiles(rootFD: rootFD, label: root, excluding: excluded)
  }

  /// As `regularFiles(root:excluding:)`, below an already opened directory.
  static func regularFiles(rootFD: Int32, label: String, excluding excluded: [[String]]) throws(BundleError)
    -> [RelativePath]
  {
    var result: [RelativePath] = []
    var entries = 0
    try walk(fd: rootFD, prefix: [], root: label, excluded: excluded, into: &result, entries: &entries)
    return result
  }

  static func openDirectory(_ path: String) throws(BundleError) -> Int32 {
    var st = stat()
    guard lstat(path, &st) == 0 else { throw BundleError.io(path, "lstat", errno: errno) }
    guard (st.st_mode & S_IFMT) == S_IFDIR else {
      throw BundleError(.contentMismatch, "\(path): not a directory (symlinks are not followed)")
    }
    let fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
    guard fd >= 0 else { throw BundleError.io(path, "open", errno: errno) }
    return fd
  }

  private static func walk(
    fd: Int32, prefix: [String], root: String, excluded: [[String]], into result: inout [RelativePath],
    entries: inout Int
  ) throws(BundleError) {
    guard prefix.count < maxDepth else {
      throw BundleError(
        .contentMismatch, "\(RelativePath(components: prefix)): directory nesting deeper than \(maxDepth)")
    }
    // fdopendir takes ownership of its descriptor, so give it a duplicate.
    let dupFD = dup(fd)
    guard dupFD >= 0, let dir = fdopendir(dupFD) else {
      if dupFD >= 0 { close(dupFD) }
      throw BundleError.io(root, "opendir", errno: errno)
    }
    defer { closedir(dir) }
    var names: [String] = []
    while true {
      errno = 0
      guard let entry = readdir(dir) else {
        if errno != 0 { throw BundleError.io(root, "readdir", errno: errno) }
        break
      }
      let raw: [UInt8] = withUnsafeBytes(of: entry.pointee.d_name) { buffer in
        Array(buffer.prefix { $0 != 0 })
      }
      if raw == [0x2E] || raw == [0x2E, 0x2E] { continue }
      guard let name = String(validating: raw, as: UTF8.self) else {
        throw BundleError(.contentMismatch, "\(RelativePath(components: prefix)): a file name is not valid UTF-8")
      }
      entries += 1
      guard entries <= maxEntries else {
        throw BundleError(.contentMismatch, "\(root): more than \(maxEntries) entries")
      }
      names.append(name)
    }
    for name in names {
      let path = RelativePath(components: prefix + [name])
      var st = stat()
      guard fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 else {
        throw BundleError.io(path.name, "stat", errno: errno)
      }
      switch st.st_mode & S_IFMT {
      case S_IFREG:
        if !excluded.contains(where: { path.isEqualOrBelow($0) }) { result.append(path) }
      case S_IFDIR:
        let child = openat(fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard child >= 0 else { throw BundleError.io(path.name, "open", errno: errno) }
        defer { close(child) }
        try walk(fd: child, prefix: path.components, root: root, excluded: excluded, into: &result, entries: &entries)
      case S_IFLNK:
        throw BundleError(.contentMismatch, "\(path): symbolic links are not allowed in a bundle")
      default:
        throw BundleError(.contentMismatch, "\(path): special files (FIFO, socket, device) are not allowed in a bundle")
      }
    }
  }

  /// Opens a regular file below `rootFD` without following any symlink on the way (each component `O_NOFOLLOW`).
  static func openRegularFile(rootFD: Int32, _ path: RelativePath) throws(BundleError) -> (fd: Int32, size: Int64) {
    var dirFD = rootFD
    var opened: [Int32] = []
    defer { for fd in opened { close(fd) } }
    for component in path.components.dropLast() {
      let next = openat(dirFD, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
      guard next >= 0 else {
        throw BundleError(.contentMismatch, "\(path): cannot open (\(String(cString: strerror(errno))))")
      }
      opened.append(next)
      dirFD = next
    }
    guard let last = path.components.last else { throw BundleError(.contentMismatch, "empty path") }
    let fd = openat(dirFD, last, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else {
      let code = errno
      if code == ELOOP { throw BundleError(.contentMismatch, "\(path): symbolic links are not allowed in a bundle") }
      if code == ENOENT { throw BundleError(.contentMismatch, "\(path): signed file is missing") }
      throw BundleError(.contentMismatch, "\(path): cannot open (\(String(cString: strerror(code))))")
    }
    var st = stat()
    guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
      close(fd)
      throw BundleError(.contentMismatch, "\(path): not a regular file")
    }
    return (fd, Int64(st.st_size))
  }

  /// Result of hashing one file.
  struct Hashed: Sendable {
    let path: RelativePath
    let digest: [UInt8]
    let size: Int64
    /// The file's bytes, when the caller asked to keep them as an array (the manifest): exactly the bytes hashed.
    let contents: [UInt8]?
    /// The file's bytes in read-only memory, when the caller asked to keep every file: exactly the bytes hashed.
    let sealed: SealedBytes?
  }

  /// What to keep of a file while hashing it.
  enum Keep: Sendable, Hashable {
    case nothing
    /// An array, refusing files over `limit` bytes (the manifest).
    case array(limit: Int)
    /// Sealed read-only pages (every file the runtime may read).
    case sealed
  }

  static let chunkSize = 1 << 20

  /// SHA-256 of one file, read once from a descriptor opened below `rootFD` without following links; keeps the bytes
  /// as `keep` says. The file must be exactly as large as `fstat` said when it was opened: a file that grows or
  /// shrinks while it is read is refused.
  static func hashFile(rootFD: Int32, _ path: RelativePath, keep: Keep) throws(BundleError) -> Hashed {
    let (fd, size) = try openRegularFile(rootFD: rootFD, path)
    defer { close(fd) }
    guard let expected = Int(exactly: size) else {
      throw BundleError(.contentMismatch, "\(path): size \(size) out of range")
    }
    var hasher = SHA256()
    var kept: [UInt8] = []
    var sealed: SealedBytes? = nil
    switch keep {
    case .nothing: break
    case .array(let limit):
      guard expected <= limit else { throw BundleError(.invalidManifest, "\(path): larger than \(limit) bytes") }
      kept.reserveCapacity(expected)
    case .sealed:
      sealed = try SealedBytes(capacity: expected)
    }
    var total = 0
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 16)
    defer { buffer.deallocate() }
    while true {
      // Read one byte past the expected size, so that a file that grew is noticed.
      let want = min(chunkSize, expected - total + 1)
      let n: Int
      if let sealed, total < expected {
        let (pointer, room) = sealed.fillPointer
        n = read(fd, pointer, min(want, room))
      } else {
        n = read(fd, buffer.baseAddress, want)
      }
      if n < 0 {
        if errno == EINTR || errno == EAGAIN { continue }
        throw BundleError.io(path.name, "read", errno: errno)
      }
      if n == 0 { break }
      guard n <= expected - total else {
        throw BundleError(.contentMismatch, "\(path): changed size while being read (grew beyond \(expected) bytes)")
      }
      if let sealed {
        let (pointer, _) = sealed.fillPointer
        hasher.update(bufferPointer: UnsafeRawBufferPointer(start: pointer, count: n))
        sealed.didFill(n)
      } else {
        let chunk = UnsafeRawBufferPointer(rebasing: buffer[0..<n])
        hasher.update(bufferPointer: chunk)
        if case .array = keep { kept.append(contentsOf: chunk) }
      }
      total += n
    }
    guard total == expected else {
      throw BundleError(.contentMismatch, "\(path): changed size while being read (\(total) of \(expected) bytes)")
    }
    try sealed?.seal()
    let contents: [UInt8]? = if case .array = keep { kept } else { nil }
    return Hashed(path: path, digest: Array(hasher.finalize()), size: Int64(total), contents: contents, sealed: sealed)
  }

  /// Hashes `files` below the directory `rootFD` in parallel, at most `maxConcurrent` at a time (each task blocks on
  /// reads, so the bound keeps us from monopolising the cooperative pool). Results come back in the input order.
  static func hashFiles(
    rootFD: Int32, label: String, _ files: [RelativePath],
    keep: @escaping @Sendable (RelativePath) -> Keep = { _ in .nothing },
    maxConcurrent: Int = defaultConcurrency
  ) async throws(BundleError) -> [Hashed] {
    let width = max(1, maxConcurrent)
    do {
      return try await withThrowingTaskGroup(of: (Int, Hashed).self) { group in
        var results = [Hashed?](repeating: nil, count: files.count)
        var next = 0
        func add(_ i: Int) {
          let path = files[i]
          let keepThis = keep(path)
          group.addTask { (i, try FileTree.hashFile(rootFD: rootFD, path, keep: keepThis)) }
        }
        while next < files.count && next < width {
          add(next)
          next += 1
        }
        while let (i, hashed) = try await group.next() {
          results[i] = hashed
          if next < files.count {
            add(next)
            next += 1
          }
        }
        return results.compactMap { $0 }
      }
    } catch let error as BundleError {
      throw error
    } catch {
      throw BundleError(.io, "\(label): hashing failed: \(error)")
    }
  }

  static var defaultConcurrency: Int { min(8, max(2, ProcessInfo.processInfo.activeProcessorCount)) }

  /// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename, fsync the directory.
  static func writeAtomically(_ data: [UInt8], to path: String, mode: mode_t = 0o644) throws(BundleError) {
    let url = URL(fileURLWithPath: path)
    let dir = url.deletingLastPathComponent().path
    let temp = url.deletingLastPathComponent().appendingPathComponent(
      ".\(url.lastPathComponent).tmp-\(UUID().uuidString)"
    ).path
    let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
    guard fd >= 0 else { throw BundleError.io(temp, "create", errno: errno) }
    var ok = false
    defer {
      if !ok { unlink(temp) }
    }
    do {
      defer { close(fd) }
      try writeAll(fd: fd, data, path: temp)
      guard fsync(fd) == 0 else { throw BundleError.io(temp, "fsync", errno: errno) }
    }
    guard rename(temp, path) == 0 else { throw BundleError.io(path, "rename", errno: errno) }
    ok = true
    let dirFD = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dirFD >= 0 else { throw BundleError.io(dir, "open", errno: errno) }
    defer { close(dirFD) }
    guard fsync(dirFD) == 0 else { throw BundleError.io(dir, "fsync", errno: errno) }
  }

  static func writeAll(fd: Int32, _ data: some Collection<UInt8>, path: String) throws(BundleError) {
    let bytes = Array(data)
    var offset = 0
    while offset < bytes.count {
      let n = bytes.withUnsafeBytes { buffer in
        write(fd, buffer.baseAddress.map { $0 + offset }, bytes.count - offset)
      }
      if n < 0 {
        if errno == EINTR { continue }
        throw BundleError.io(path, "write", errno: errno)
      }
      offset += n
    }
  }

  /// Reads a whole regular file (not through a symlink), refusing files over `limit` bytes.
  static func readSmallFile(_ path: String, limit: Int, kind: BundleError.Kind, label: String) throws(BundleError)
    -> [UInt8]
  {
    let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { throw openFailure(errno, kind: kind, label: label) }
    defer { close(fd) }
    return try readSmall(fd: fd, limit: limit, kind: kind, label: label)
  }

  /// Reads a whole regular file directly in the directory `dirFD` (one component, not through a symlink).
  static func readSmallFile(dirFD: Int32, name: String, limit: Int, kind: BundleError.Kind, label: String)
    throws(BundleError) -> [UInt8]
  {
    let fd = openat(dirFD, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    guard fd >= 0 else { throw openFailure(errno, kind: kind, label: label) }
    defer { close(fd) }
    return try readSmall(fd: fd, limit: limit, kind: kind, label: label)
  }

  private static func openFailure(_ code: Int32, kind: BundleError.Kind, label: String) -> BundleError {
    if code == ENOENT { return BundleError(kind, "\(label): missing") }
    if code == ELOOP { return BundleError(kind, "\(label): is a symbolic link") }
    return BundleError.io(label, "open", errno: code)
  }

  private static func readSmall(fd: Int32, limit: Int, kind: BundleError.Kind, label: String) throws(BundleError)
    -> [UInt8]
  {
    var st = stat()
    guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
      throw BundleError(kind, "\(label): not a regular file")
    }
    guard st.st_size >= 0, st.st_size <= limit else { throw BundleError(kind, "\(label): larger than \(limit) bytes") }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
      let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
      if n < 0 {
        if errno == EINTR || errno == EAGAIN { continue }
        throw BundleError.io(label, "read", errno: errno)
      }
      if n == 0 { break }
      out.append(contentsOf: buffer[0..<n])
      guard out.count <= limit else { throw BundleError(kind, "\(label): larger than \(limit) bytes") }
    }
    return out
  }
}

enum Hex {
  static func encode(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in bytes {
      out.append(digits[Int(b >> 4)])
      out.append(digits[Int(b & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
  }

  /// Decodes lowercase hex only (the format writes lowercase; anything else is refused, not normalised).
  static func decodeLowercase(_ text: String) -> [UInt8]? {
    let chars = Array(text.utf8)
    guard chars.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(chars.count / 2)
    func nibble(_ c: UInt8) -> UInt8? {
      switch c {
      case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
      case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
      default: nil
      }
    }
    var i = 0
    while i < chars.count {
      guard let hi = nibble(chars[i]), let lo = nibble(chars[i + 1]) else { return nil }
      out.append(hi << 4 | lo)
      i += 2
    }
    return out
  }
}
