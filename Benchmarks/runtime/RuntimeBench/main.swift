// runtime-bench: latency of Palisade's ONNX runtime on the fixture models at batch 1 and 32.
//
//   swift build -c release --product runtime-bench
//   .build/release/runtime-bench [--fixtures Tests/Fixtures] [--seconds 2] [--threads N] [--json] [--cpu]
//                                [--model NAME] [--onnx FILE --input-shape 32x784]
//
// For each model and batch: load, build the plan, warm up, then time back-to-back synchronous inferences
// (`ONNXModel.predict` on the calling thread plus the worker pool) for about `--seconds`, and report the
// median and mean latency. `--json` prints one JSON object per line for Benchmarks/runtime/compare.py.
// `--cpu` times with the process's CPU clock (meaningful with `--threads 1`): on a machine shared with builds it
// is what an inference costs, where wall time also counts the waits. `--onnx` times one model file at the given
// input shape (e.g. the peer benchmark's wide_mlp at 32x784) instead of the fixtures. `--in-pool` runs the timing
// loop on a pool thread, as the server does (`ONNXServableModel`): `--threads N` then means N threads in all,
// like onnxruntime's intra_op_num_threads; without it the calling thread joins N pool threads (N + 1).
import Foundation
import PalisadeCore
import PalisadeKernels
import PalisadeRuntime

var fixtures = "Tests/Fixtures"
var seconds = 2.0
var threads: Int? = nil
var json = false
var only: String? = nil
var profile = false
nonisolated(unsafe) var cpuClock = false
var onnxFile: String? = nil
var inputShape: [Int] = []
var inPool = false
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let a = arguments.next() {
  switch a {
  case "--fixtures": fixtures = arguments.next() ?? fixtures
  case "--seconds": seconds = Double(arguments.next() ?? "") ?? seconds
  case "--threads": threads = Int(arguments.next() ?? "")
  case "--model": only = arguments.next()
  case "--json": json = true
  case "--profile": profile = true
  case "--cpu": cpuClock = true
  case "--in-pool": inPool = true
  case "--onnx": onnxFile = arguments.next()
  case "--input-shape": inputShape = (arguments.next() ?? "").split(separator: "x").compactMap { Int($0) }
  default:
    FileHandle.standardError.write(Data("unknown argument \(a)\n".utf8))
    exit(2)
  }
}
let pool = threads.map { WorkerPool(threadCount: $0) } ?? WorkerPool.shared
let dir = URL(fileURLWithPath: fixtures)

func now() -> UInt64 {
  guard cpuClock else { return DispatchTime.now().uptimeNanoseconds }
  var ts = timespec()
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts)
  return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func randomInput(_ value: GraphValue, batch: Int) throws -> Tensor {
  let shape = value.dims.map { d -> Int64 in
    if case .fixed(let n) = d { return Int64(n) }
    return Int64(batch)
  }
  let count = shape.reduce(1, *)
  var state: UInt32 = 12345
  switch value.elementType {
  case .int64:
    return try Tensor(name: value.name, shape: shape, values: (0..<count).map { _ in Int64.random(in: 0..<10) })
  default:
    let values = (0..<count).map { _ -> Float in
      state = state &* 1_664_525 &+ 1_013_904_223
      return Float(state >> 8) / Float(1 << 24) * 2 - 1
    }
    return try Tensor(name: value.name, shape: shape, values: values)
  }
}

if !json {
  print("model                 batch   median_us     mean_us   iters  steps  arena_KiB")
}
var models = ["mlp_digits", "mlp_torch", "cnn_torch", "encoder_torch"].filter { only == nil || only == $0 }
  .map { ($0, dir.appendingPathComponent($0 + ".onnx")) }
if let onnxFile {
  let url = URL(fileURLWithPath: onnxFile)
  models = [(url.deletingPathExtension().lastPathComponent, url)]
}
for (name, url) in models {
  let model: ONNXModel
  do {
    model = try ONNXModel.load(contentsOf: url)
  } catch {
    print("\(name): \(error)")
    exit(1)
  }
  for batch in inputShape.first.map({ [$0] }) ?? [1, 32] {
    do {
      let inputs = try model.inputs.map { try randomInput($0, batch: batch) }
      let plan = try model.plan(for: inputs.map { $0.shape.map { Int($0) } })
      if profile {
        let steps = try plan.profile(inputs, iterations: 200, pool: pool)
        print("\(name) batch \(batch): \(String(format: "%.1f", steps.map(\.1).reduce(0, +) / 1000)) us in steps")
        for (label, ns) in steps { print(String(format: "  %9.1f us  ", ns / 1000) + label) }
        continue
      }
      let duration = UInt64(seconds * 1e9)
      let measure: @Sendable () throws -> [Double] = {
        // Warm-up: caches, page faults, pool threads.
        let warmEnd = now() + 200_000_000
        while now() < warmEnd { _ = try model.predict(inputs, pool: pool) }
        var samples: [Double] = []
        let end = now() + duration
        while now() < end || samples.count < 20 {
          let t0 = now()
          _ = try model.predict(inputs, pool: pool)
          samples.append(Double(now() - t0) / 1000)
        }
        return samples
      }
      var samples = inPool ? try await pool.run(measure) : try measure()
      samples.sort()
      let median = samples[samples.count / 2]
      let mean = samples.reduce(0, +) / Double(samples.count)
      if json {
        print(
          "{\"model\": \"\(name)\", \"batch\": \(batch), \"median_us\": \(median), \"mean_us\": \(mean), \"iters\": \(samples.count), \"threads\": \(pool.threadCount)}"
        )
      } else {
        print(
          name.padding(toLength: 20, withPad: " ", startingAt: 0),
          String(
            format: "%7d %11.1f %11.1f %7d %6d %10.1f", batch, median, mean, samples.count, plan.stepCount,
            Double(plan.arenaBytes) / 1024))
      }
    } catch {
      print("\(name) batch \(batch): \(error)")
      exit(1)
    }
  }
}
