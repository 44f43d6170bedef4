import Foundation
import PalisadeONNXProto

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// Reading model files from disk, for `ONNXModel.load(contentsOf:)` only (tools and tests). The server's runtime
/// never comes here: it is handed the bundle's verified bytes.
enum ModelFileReader {
  /// Reads the regular file at `components` below `dirFD`: every component opened with `openat` and `O_NOFOLLOW`
  /// (a symlink anywhere is refused), the file checked with `fstat` and read from that descriptor, at most `limit`
  /// bytes, and exactly as many as `fstat` reported.
  static func readFile(dirFD: Int32, components: [String], limit: Int, what: String) throws(RuntimeError) -> [UInt8] {
    var opened: [Int32] = []
    defer { for fd in opened { close(fd) } }
    var fd = dirFD
    for component in components.dropLast() {
      let next = openat(fd, component, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
      guard next >= 0 else { throw RuntimeError(.externalData, "cannot open \(what) (\(reason(errno)))") }
      opened.append(next)
      fd = next
    }
    guard let last = components.last else { throw RuntimeError(.externalData, "\(what): empty path") }
    let file = openat(fd, last, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
    guard file >= 0 else { throw RuntimeError(.externalData, "cannot open \(what) (\(reason(errno)))") }
    defer { close(file) }
    var info = stat()
    guard fstat(file, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else {
      throw RuntimeError(.externalData, "\(what) is not a regular file")
    }
    guard let size = Int(exactly: info.st_size), size >= 0 else {
      throw RuntimeError(.externalData, "\(what): bad size")
    }
    guard size <= max(0, limit) else { throw .limit("\(what) is \(size) bytes, above the limit of \(max(0, limit))") }
    var buffer = [UInt8](repeating: 0, count: size)
    var done = 0
    while done < size {
      let n = buffer.withUnsafeMutableBytes { raw -> Int in
        guard let b = raw.baseAddress else { return -1 }
        return read(file, b + done, size - done)
      }
      if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
      guard n > 0 else { throw RuntimeError(.externalData, "\(what): short read (the file changed while being read)") }
      done += n
    }
    return buffer
  }

  private static func reason(_ code: Int32) -> String {
    code == ELOOP ? "symbolic links are not followed" : String(cString: strerror(code))
  }

  /// Every external-data `location` the model's initializers and tensor attributes name.
  static func externalLocations(_ proto: Onnx_ModelProto) -> [String] {
    var out: [String] = []
    func visit(_ t: Onnx_TensorProto) {
      guard t.hasDataLocation, t.dataLocation == .external else { return }
      for entry in t.externalData where entry.key == "location" { out.append(entry.value) }
    }
    proto.graph.initializer.forEach(visit)
    for node in proto.graph.node {
      for a in node.attribute where a.hasT { visit(a.t) }
    }
    return out
  }
}
