#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// The CPU features PalisadeKernels is compiled to require, and a start-up check for them.
///
/// On x86-64 the kernels are built with `-target-cpu haswell` (the x86-64-v3 level: AVX, AVX2, FMA, F16C,
/// BMI1/2, LZCNT, MOVBE). On a CPU without them the process would die with SIGILL (illegal instruction) at the
/// first kernel call, or earlier, wherever the compiler used BMI2 or AVX2 in ordinary code. The server calls
/// ``check()`` at start and exits with a readable message instead.
///
/// This lives in its own target, compiled for the baseline x86-64 CPU, because the compiler freely uses BMI2
/// (`shlx`, `bzhi`) in ordinary integer code built for x86-64-v3: a check compiled with the kernels' flags could
/// itself trap on exactly the CPUs it is meant to reject.
public enum CPUFeatures {
  /// Error thrown by ``check()``.
  public struct Missing: Error, Sendable, Equatable, CustomStringConvertible {
    /// Names (as in /proc/cpuinfo) of the required features this CPU lacks.
    public let features: [String]
    public init(features: [String]) { self.features = features }
    public var description: String {
      "this CPU lacks \(features.joined(separator: ", ")), which Palisade's kernels require (x86-64-v3: "
        + "Intel Haswell / AMD Excavator or newer); run on a newer CPU or rebuild without -target-cpu"
    }
  }

  /// /proc/cpuinfo names of the features the x86-64 build uses.
  /// (`abm` is how Linux names LZCNT.)
  public static let required: [String] = [
    "sse4_2", "popcnt", "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm",
  ]

  /// Throws ``Missing`` if the running CPU (as reported by the kernel, which also accounts for OS support of
  /// the AVX register state) lacks a feature the kernels were compiled for. No-op on non-x86 builds and when
  /// the CPU cannot be inspected (e.g. no /proc).
  public static func check() throws(Missing) {
    #if arch(x86_64) && os(Linux)
      guard let flags = linuxCPUFlags() else { return }
      let missing = missingFeatures(given: flags)
      if !missing.isEmpty { throw Missing(features: missing) }
    #endif
  }

  /// The required features absent from `flags` (names as in /proc/cpuinfo), in ``required`` order.
  public static func missingFeatures(given flags: Set<String>) -> [String] {
    required.filter { !flags.contains($0) }
  }

  #if os(Linux)
    /// The `flags` line of the first processor in /proc/cpuinfo, split into words.
    static func linuxCPUFlags() -> Set<String>? {
      let fd = open("/proc/cpuinfo", O_RDONLY)
      if fd < 0 { return nil }
      defer { close(fd) }
      var bytes: [UInt8] = []
      var chunk = [UInt8](repeating: 0, count: 16384)
      // The first processor block is well within 64 KiB.
      while bytes.count < 65536 {
        let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if n <= 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
      }
      let text = String(decoding: bytes, as: UTF8.self)
      for line in text.split(separator: "\n") where line.hasPrefix("flags") {
        guard let colon = line.firstIndex(of: ":") else { continue }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
      }
      return nil
    }
  #endif
}
