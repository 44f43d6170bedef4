import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// CRC-32C (Castagnoli), the frame checksum: it detects torn and damaged frames. Tampering is detected by the
/// Merkle tree and the signed checkpoints, not by this.
enum CRC32C {
  static let table: [UInt32] = (0..<256).map { i -> UInt32 in
    var c = UInt32(i)
    for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0x82F6_3B78 : c >> 1 }
    return c
  }

  static func update(_ crc: UInt32, _ bytes: UnsafeRawBufferPointer) -> UInt32 {
    var c = ~crc
    table.withUnsafeBufferPointer { t in
      for b in bytes { c = t[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
    }
    return ~c
  }

  static func checksum(_ bytes: [UInt8]) -> UInt32 { bytes.withUnsafeBytes { update(0, $0) } }
}

/// One record on disk:
///
///     magic "PAL1" (4) | payload length u32 BE (4) | index u64 BE (8) | payload | CRC-32C u32 BE (4)
///
/// The CRC covers length, index and payload. Segment files start with a 16-byte header: "PALAUDIT" then the
/// index of their first record (u64 BE). The checkpoints file uses the same frames with header "PALCHKPT" and
/// the checkpoint's sequence number as the index.
enum Frame {
  static let magic: [UInt8] = Array("PAL1".utf8)
  static let overhead = 20
  static let headerSize = 16
  static let segmentMagic: [UInt8] = Array("PALAUDIT".utf8)
  static let checkpointMagic: [UInt8] = Array("PALCHKPT".utf8)
  /// Larger frames are refused (records are small; this bounds what a damaged length can make us read).
  static let maxPayload = 1 << 20

  static func encode(index: UInt64, payload: [UInt8], into out: inout [UInt8]) {
    out.append(contentsOf: magic)
    let start = out.count
    appendBE(UInt32(payload.count), to: &out)
    appendBE(index, to: &out)
    out.append(contentsOf: payload)
    let crc = out.withUnsafeBytes { CRC32C.update(0, UnsafeRawBufferPointer(rebasing: $0[start...])) }
    appendBE(crc, to: &out)
  }

  static func fileHeader(magic: [UInt8], firstIndex: UInt64) -> [UInt8] {
    var out = magic
    appendBE(firstIndex, to: &out)
    return out
  }

  static func appendBE<T: FixedWidthInteger>(_ v: T, to out: inout [UInt8]) {
    withUnsafeBytes(of: v.bigEndian) { out.append(contentsOf: $0) }
  }

  static func readBE<T: FixedWidthInteger>(_ bytes: [UInt8], at offset: Int, as: T.Type) -> T {
    var v: T = 0
    for i in 0..<MemoryLayout<T>.size { v = v << 8 | T(bytes[offset + i]) }
    return v
  }

  /// The outcome of reading the frames of one file.
  struct Scan {
    var frames: [(index: UInt64, offset: UInt64, payload: [UInt8])] = []
    /// Where the valid frames end.
    var validEnd: UInt64
    /// Set when bytes after `validEnd` are not a valid frame.
    var problem: Problem?
  }

  struct Problem: Sendable {
    var offset: UInt64
    var expectedIndex: UInt64
    var reason: String
    /// True when the damage can only be an interrupted append: an incomplete last frame, or zeros to the end.
    var isTornTail: Bool
  }

  /// Reads every frame of `bytes` (a whole file) after its header; frames must carry consecutive indices from
  /// `firstIndex`.
  static func scan(_ bytes: [UInt8], firstIndex: UInt64) -> Scan {
    var scan = Scan(validEnd: UInt64(headerSize))
    var offset = headerSize
    var expected = firstIndex
    func fail(_ reason: String, torn: Bool) {
      scan.problem = Problem(offset: UInt64(offset), expectedIndex: expected, reason: reason, isTornTail: torn)
    }
    while offset < bytes.count {
      let remaining = bytes.count - offset
      if bytes[offset...].allSatisfy({ $0 == 0 }) {
        fail("\(remaining) zero bytes after the last record", torn: true)
        break
      }
      if remaining < overhead {
        fail(
          "incomplete frame (\(remaining) bytes)",
          torn: Array(bytes[offset...]).starts(with: magic.prefix(min(4, remaining))))
        break
      }
      guard Array(bytes[offset..<offset + 4]) == magic else {
        fail("bad frame magic", torn: false)
        break
      }
      let length = Int(readBE(bytes, at: offset + 4, as: UInt32.self))
      let index = readBE(bytes, at: offset + 8, as: UInt64.self)
      guard length <= maxPayload else {
        fail("frame length \(length) exceeds the limit \(maxPayload)", torn: false)
        break
      }
      let end = offset + overhead + length
      if end > bytes.count {
        fail("incomplete frame: \(length)-byte payload, \(remaining - overhead) bytes present", torn: true)
        break
      }
      let stored = readBE(bytes, at: end - 4, as: UInt32.self)
      let crc = bytes.withUnsafeBytes {
        CRC32C.update(0, UnsafeRawBufferPointer(rebasing: $0[(offset + 4)..<(end - 4)]))
      }
      guard crc == stored else {
        // A complete frame with a bad checksum at the very end can be a partially persisted write.
        fail("frame checksum mismatch", torn: end == bytes.count)
        break
      }
      guard index == expected else {
        fail(
          "frame carries index \(index), expected \(expected) (a record missing, reordered or duplicated)", torn: false)
        break
      }
      scan.frames.append((index, UInt64(offset), Array(bytes[(offset + 16)..<(end - 4)])))
      expected += 1
      offset = end
      scan.validEnd = UInt64(end)
    }
    return scan
  }
}

/// Thin POSIX file helpers: the log needs exact control over write, fsync and truncate.
enum POSIXFile {
  static func readAll(_ path: String) throws -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw AuditError.io(path: path, operation: "open", errno: errno) }
    defer { close(fd) }
    var out: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    while true {
      let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
      if n < 0 {
        if errno == EINTR { continue }
        throw AuditError.io(path: path, operation: "read", errno: errno)
      }
      if n == 0 { break }
      out.append(contentsOf: buffer[0..<n])
    }
    return out
  }

  static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String) throws {
    var done = 0
    try bytes.withUnsafeBytes { raw in
      guard let base = raw.baseAddress else { return }
      while done < raw.count {
        let n = write(fd, base + done, raw.count - done)
        if n < 0 {
          if errno == EINTR { continue }
          throw AuditError.io(path: path, operation: "write", errno: errno)
        }
        done += n
      }
    }
  }

  static func sync(_ fd: Int32, path: String) throws {
    #if os(Linux)
      let r = fdatasync(fd)
    #else
      let r = fsync(fd)
    #endif
    if r != 0 { throw AuditError.io(path: path, operation: "fsync", errno: errno) }
  }

  /// A file's length.
  static func size(_ path: String) throws -> UInt64 {
    var info = stat()
    guard stat(path, &info) == 0 else { throw AuditError.io(path: path, operation: "stat", errno: errno) }
    return UInt64(max(0, info.st_size))
  }

  /// Makes a created or renamed entry in `directory` durable.
  static func syncDirectory(_ directory: String) throws {
    let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { throw AuditError.io(path: directory, operation: "open", errno: errno) }
    defer { close(fd) }
    if fsync(fd) != 0 { throw AuditError.io(path: directory, operation: "fsync", errno: errno) }
  }
}

/// File names in a log directory: `segment-<first index, 20 digits>.log` and `checkpoints.log`.
enum LogFiles {
  static let checkpoints = "checkpoints.log"
  /// Held with flock(2) by the one writer.
  static let lock = "writer.lock"

  static func segmentName(firstIndex: UInt64) -> String {
    let digits = String(firstIndex)
    return "segment-" + String(repeating: "0", count: 20 - digits.count) + digits + ".log"
  }

  /// The segments of `directory`, ordered by first index (from the name; the header must agree).
  static func segments(in directory: String) throws -> [(name: String, firstIndex: UInt64)] {
    let names: [String]
    do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
      throw AuditError.io(path: directory, operation: "list", errno: ENOENT)
    }
    return names.compactMap { name -> (String, UInt64)? in
      guard name.hasPrefix("segment-"), name.hasSuffix(".log"), name.count == 32,
        let first = UInt64(name.dropFirst(8).dropLast(4))
      else { return nil }
      return (name, first)
    }.sorted { $0.1 < $1.1 }
  }
}
