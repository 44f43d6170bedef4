// kernel-bench: SGEMM throughput of PalisadeKernels (release build).
//
//   swift build -c release && .build/release/kernel-bench [--sizes 256,512,1024,2048] [--threads 1,2] [--runs N]
//                                                          [--mnk 1x512x784,32x512x784] [--transB] [--cpu]
//                                                          [--packed]
//   .build/release/kernel-bench --vmath [--runs N] [--cpu]
//
// --packed multiplies by a B packed once beforehand (PackedGemmB, what the model runtime does for constant
// weights) instead of reading B in place or packing it per call.
//
// --cpu times with the process's CPU clock instead of the wall clock: on a machine shared with builds, a
// single-threaded kernel's CPU time is what it costs, while its wall time also counts the time it waited.
//
// Prints one line per (threads, shape): "sgemm threads=T n=N gflops=G best_ms=M" (square sizes) or
// "sgemm threads=T mnk=MxNxK gflops=G best_ms=M" (--mnk, e.g. inference layer shapes), best of N runs after a
// warm-up, C = A * op(B) with row-major matrices of uniform random values.
//
// --vmath times the vector math instead, one thread: exp, erf, GELU and sigmoid over 64K floats in [-20, 20], and
// row softmax over rows of 10, 64 and 1000, printing "vmath op=NAME ns_per_element=X" (best of N runs); the
// "vmath-before" lines time the previous implementations (Legacy.swift) in the same build.
import PalisadeCPUCheck
import PalisadeKernels

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

nonisolated(unsafe) var clock = CLOCK_MONOTONIC

func now() -> Double {
  var ts = timespec()
  clock_gettime(clock, &ts)
  return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}

func parseList(_ text: String) -> [Int] {
  text.split(separator: ",").compactMap { Int($0) }
}

do {
  try CPUFeatures.check()
} catch {
  print("kernel-bench: \(error)")
  exit(1)
}

var sizes = [256, 512, 1024, 2048]
var threadCounts = [1, 2]
var runs = 7
var transB = false
var packed = false
var vmath = false
var shapes: [(m: Int, n: Int, k: Int, label: String)] = []
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let argument = arguments.next() {
  switch argument {
  case "--sizes": sizes = parseList(arguments.next() ?? "")
  case "--threads": threadCounts = parseList(arguments.next() ?? "")
  case "--runs": runs = Int(arguments.next() ?? "") ?? runs
  case "--transB": transB = true
  case "--cpu": clock = CLOCK_PROCESS_CPUTIME_ID
  case "--packed": packed = true
  case "--vmath": vmath = true
  case "--mnk":
    shapes = (arguments.next() ?? "").split(separator: ",").map { spec in
      let dims = spec.split(separator: "x").compactMap { Int($0) }
      return dims.count == 3 ? (dims[0], dims[1], dims[2], "mnk=\(spec)") : (0, 0, 0, "invalid=\(spec)")
    }
  default:
    print(
      "usage: kernel-bench [--sizes 256,512] [--threads 1,2] [--runs N] [--transB] [--mnk MxNxK,...] [--cpu] [--packed]"
    )
    exit(2)
  }
}

/// xorshift: SystemRandomNumberGenerator makes a syscall per value, far too slow for 4M-element inputs.
struct FastRandom: RandomNumberGenerator {
  var state: UInt64 = 0x9E37_79B9_7F4A_7C15
  mutating func next() -> UInt64 {
    state ^= state << 13
    state ^= state >> 7
    state ^= state << 17
    return state
  }
}
var generator = FastRandom()

/// Best time per element of `body` over `count` elements (runs after a warm-up).
func timePerElement(count: Int, runs: Int, _ body: () -> Void) -> Double {
  var best = Double.infinity
  let reps = max(1, 50_000_000 / max(count, 1))
  for run in 0...runs {
    let start = now()
    for _ in 0..<reps { body() }
    let elapsed = (now() - start) / Double(reps)
    if run > 0 { best = min(best, elapsed) }
  }
  return best / Double(count)
}

if vmath {
  let count = 1 << 16
  let x = (0..<count).map { _ in Float.random(in: -20...20, using: &generator) }
  var y = [Float](repeating: 0, count: count)
  x.withUnsafeBufferPointer { px in
    y.withUnsafeMutableBufferPointer { py in
      guard let px = px.baseAddress, let py = py.baseAddress else { return }
      for (name, op) in [("exp", UnaryOp.exp), ("erf", .erf), ("gelu", .gelu), ("sigmoid", .sigmoid)] {
        let t = timePerElement(count: count, runs: runs) { unary(op, px, out: py, count: count) }
        print("vmath op=\(name) ns_per_element=\(String(format2: t * 1e9))")
      }
      for name in ["exp", "erf", "gelu"] {
        let t = timePerElement(count: count, runs: runs) {
          switch name {
          case "exp": Legacy.map(px, py, count) { Legacy.exp($0) }
          case "erf": Legacy.map(px, py, count) { Legacy.erf($0) }
          default: Legacy.map(px, py, count) { Legacy.gelu($0) }
          }
        }
        print("vmath-before op=\(name) ns_per_element=\(String(format2: t * 1e9))")
      }
      for n in [10, 64, 1000] {
        let rows = count / n
        let t = timePerElement(count: rows * n, runs: runs) { softmax(px, py, outer: rows, axisLength: n) }
        print("vmath op=softmax_rows_of_\(n) ns_per_element=\(String(format2: t * 1e9))")
        let t0 = timePerElement(count: rows * n, runs: runs) { Legacy.softmaxRows(px, py, rows: rows, n: n) }
        print("vmath-before op=softmax_rows_of_\(n) ns_per_element=\(String(format2: t0 * 1e9))")
      }
    }
  }
  exit(0)
}
if shapes.isEmpty { shapes = sizes.map { ($0, $0, $0, "n=\($0)") } }
for threads in threadCounts {
  let pool: WorkerPool? = threads > 1 ? WorkerPool(threadCount: threads) : nil
  for (m, n, k, label) in shapes where m > 0 && n > 0 && k > 0 {
    let a = (0..<(m * k)).map { _ in Float.random(in: -1...1, using: &generator) }
    let b = (0..<(k * n)).map { _ in Float.random(in: -1...1, using: &generator) }
    var c = [Float](repeating: 0, count: m * n)
    let flops = 2.0 * Double(m) * Double(n) * Double(k)
    // Enough repetitions per run that each run takes >= ~50 ms.
    let reps = max(1, Int(5e9 / flops))
    var best = Double.infinity
    a.withUnsafeBufferPointer { pa in
      b.withUnsafeBufferPointer { pb in
        c.withUnsafeMutableBufferPointer { pc in
          guard let pa = pa.baseAddress, let pb = pb.baseAddress, let pc = pc.baseAddress else { return }
          let packedB = packed ? PackedGemmB(k: k, n: n, b: pb, ldb: transB ? k : n, transposed: transB) : nil
          for run in 0...runs {
            let start = now()
            for _ in 0..<reps {
              if let packedB {
                sgemm(m: m, a: pa, lda: k, packedB: packedB, c: pc, ldc: n, pool: pool)
                continue
              }
              sgemm(
                transA: false, transB: transB, m: m, n: n, k: k, alpha: 1,
                a: pa, lda: k, b: pb, ldb: transB ? k : n,
                beta: 0, c: pc, ldc: n, pool: pool)
            }
            let elapsed = (now() - start) / Double(reps)
            if run > 0 { best = min(best, elapsed) }  // run 0 is the warm-up
          }
        }
      }
    }
    let gflops = flops / best / 1e9
    print(
      "sgemm\(packed ? " packed" : "") threads=\(threads) \(label) gflops=\(String(format2: gflops)) best_ms=\(String(format2: best * 1e3))"
    )
  }
}

extension String {
  init(format2 value: Double) {
    let scaled = (value * 100).rounded() / 100
    self = "\(scaled)"
  }
}
