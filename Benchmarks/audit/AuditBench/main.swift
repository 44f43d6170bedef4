// audit-bench: audit-log appends per second in sync and batched modes (1, 8, 32 concurrent appenders) against
// two raw baselines in the same run: write+fdatasync per record, and buffered writes with one final fdatasync.
// Usage: audit-bench SCRATCH_DIR [COUNT] [SYNC_COUNT]   (Benchmarks/audit/run.sh)
//        audit-bench SCRATCH_DIR paced [RATE] [SECONDS]   appends paced like RPCs, CPU and context switches per record
import Foundation
import PalisadeAudit

#if canImport(Glibc)
  import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
  FileHandle.standardError.write(Data("usage: audit-bench SCRATCH_DIR [COUNT] [SYNC_COUNT]\n".utf8))
  exit(2)
}
let dir = arguments[1]
let pacedMode = arguments.count > 2 && arguments[2] == "paced"
let count = arguments.count > 2 ? Int(arguments[2]) ?? 50_000 : 50_000
let syncCount = arguments.count > 3 ? Int(arguments[3]) ?? 3000 : 3000

/// A realistic call record: every field set, no tensor data.
func sampleRecord(_ n: Int) -> AuditRecord {
  AuditRecord(
    kind: .call, principal: "spiffe://palisade.dev/ns/demo/sa/client-a",
    certificateThumbprint: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", tokenID: "tok-\(n)",
    rpc: "ModelInfer", model: "digits", version: "1",
    manifestDigest: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    inputSHA256: "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
    outputSHA256: "baa5a0964d3320fbc0c6a922140453c8513ea24ab8fd0577034804a967248096", status: "OK",
    reason: "rule demo-callers", latencyMicros: 812, requestID: "req-\(n)")
}

func cpuMicros() -> Double {
  var usage = rusage()
  getrusage(RUSAGE_SELF.rawValue, &usage)
  return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6
    + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
}

func fresh(_ name: String) throws -> String {
  let path = dir + "/" + name
  try? FileManager.default.removeItem(atPath: path)
  try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  return path
}

struct Measurement {
  var rate: Double
  var cpu: Double
}

func measure(_ count: Int, _ start: ContinuousClock.Instant, _ cpu0: Double) -> Measurement {
  let elapsed = start.duration(to: .now)
  let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
  return Measurement(rate: Double(count) / seconds, cpu: (cpuMicros() - cpu0) / Double(count))
}

/// The floor: the same bytes per record written by one thread with no tree, no framing work and no queue.
func raw(payload: [UInt8], count: Int, fsyncEach: Bool) throws -> Measurement {
  let path = try fresh("raw") + "/raw.log"
  let fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
  guard fd >= 0 else { throw AuditError.io(path: path, operation: "create", errno: errno) }
  defer { close(fd) }
  var frame = [UInt8](repeating: 0x41, count: 16)
  frame.append(contentsOf: payload)
  frame.append(contentsOf: [0, 0, 0, 0])
  let cpu0 = cpuMicros()
  let start = ContinuousClock.now
  for _ in 0..<count {
    _ = frame.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    if fsyncEach { _ = fdatasync(fd) }
  }
  if !fsyncEach { _ = fdatasync(fd) }
  return measure(count, start, cpu0)
}

func audit(mode: AuditConfiguration.Durability, concurrency: Int, count: Int, key: AuditSigningKey) async throws
  -> Measurement
{
  var config = AuditConfiguration(directory: try fresh("log-\(mode.rawValue)-\(concurrency)"), keyFile: "")
  config.durability = mode
  let log = try AuditLog.open(configuration: config, key: key)
  let perTask = count / concurrency
  let cpu0 = cpuMicros()
  let start = ContinuousClock.now
  try await withThrowingTaskGroup(of: Void.self) { group in
    for t in 0..<concurrency {
      group.addTask {
        for i in 0..<perTask { _ = try await log.append(sampleRecord(t * 1_000_000 + i)) }
      }
    }
    try await group.waitForAll()
  }
  // Batched appends are acknowledged before they are durable: the rate counts acknowledgements; the final
  // flush in close() is outside the timing (its fsyncs are bounded by batch_interval_ms anyway).
  let result = measure(perTask * concurrency, start, cpu0)
  await log.close()
  _ = try AuditVerifier.verify(directory: config.directory, key: key.verifyingKey)
  return result
}

let key = try AuditSigningKey.generate(name: AuditConfiguration.defaults.origin)
if pacedMode {
  let rate = arguments.count > 3 ? Int(arguments[3]) ?? 5000 : 5000
  let seconds = arguments.count > 4 ? Double(arguments[4]) ?? 4 : 4
  try await paced(rate: rate, seconds: seconds, key: key)
  exit(0)
}
let payload = sampleRecord(1).canonicalJSON()
print("record: \(payload.count) bytes of canonical JSON (+20 bytes framing)")
let encodeStart = cpuMicros()
var sink = 0
for i in 0..<count { sink &+= Int(Merkle.leafHash(sampleRecord(i).canonicalJSON())[0]) }
let encodeCost = (cpuMicros() - encodeStart) / Double(count)
print(
  "caller-side cost (build record + canonical JSON + leaf hash): \(String(format: "%.2f", encodeCost)) µs/record [\(sink % 2)]"
)
let rawSync = try raw(payload: payload, count: syncCount, fsyncEach: true)
let rawBuffered = try raw(payload: payload, count: count, fsyncEach: false)
print("")
print("| run | appenders | records | appends/s | CPU µs/append | ÷ raw fsync/record | ÷ raw buffered write |")
print("|---|---:|---:|---:|---:|---:|---:|")
func row(_ name: String, _ c: Int, _ n: Int, _ m: Measurement) {
  print(
    "| \(name) | \(c) | \(n) | \(Int(m.rate)) | \(String(format: "%.1f", m.cpu)) | \(String(format: "%.2f", m.rate / rawSync.rate)) | \(String(format: "%.3f", m.rate / rawBuffered.rate)) |"
  )
}
row("raw write+fdatasync per record", 1, syncCount, rawSync)
row("raw buffered write (one fdatasync)", 1, count, rawBuffered)
for mode in AuditConfiguration.Durability.allCases {
  for c in [1, 8, 32] {
    let n = mode == .sync && c == 1 ? syncCount : count
    row("AuditLog \(mode.rawValue)", c, n, try await audit(mode: mode, concurrency: c, count: n, key: key))
  }
}

// MARK: paced appends (what a server sees: records arrive one at a time, not back to back)

/// Context switches of the whole process (every thread, including exited ones): voluntary, involuntary.
func contextSwitches() -> (voluntary: Int, involuntary: Int) {
  var usage = rusage()
  getrusage(RUSAGE_SELF.rawValue, &usage)
  return (usage.ru_nvcsw, usage.ru_nivcsw)
}

/// `concurrency` tasks each append one record every `concurrency / rate` seconds (like callers whose RPCs each
/// end with one audit record), for `seconds`; the same pacing without appends is the baseline. Reports CPU and
/// context switches per record over the baseline: the cost the log adds to each call.
func paced(rate: Int, seconds: Double, key: AuditSigningKey) async throws {
  print("paced appends: \(rate)/s target, \(String(format: "%.0f", seconds)) s per run; load average \(loadAverage())")
  print("")
  print("| mode | tasks | records/s | CPU µs/record | over baseline | voluntary cs/record | involuntary cs/record |")
  print("|---|---:|---:|---:|---:|---:|---:|")
  for concurrency in [1, 32] {
    let baseline = try await pacedRun(mode: nil, concurrency: concurrency, rate: rate, seconds: seconds, key: key)
    func row(_ name: String, _ m: PacedMeasurement) {
      print(
        "| \(name) | \(concurrency) | \(Int(m.rate)) | \(String(format: "%.1f", m.cpu)) | \(String(format: "%+.1f", m.cpu - baseline.cpu)) | \(String(format: "%.2f", m.voluntary)) | \(String(format: "%.2f", m.involuntary)) |"
      )
    }
    row("no log (pacing only)", baseline)
    for mode in [AuditConfiguration.Durability.batched, .sync] {
      row(
        "AuditLog \(mode.rawValue)",
        try await pacedRun(mode: mode, concurrency: concurrency, rate: rate, seconds: seconds, key: key))
    }
  }
}

struct PacedMeasurement {
  var rate: Double
  var cpu: Double
  var voluntary: Double
  var involuntary: Double
}

func loadAverage() -> String {
  (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3).joined(
    separator: " ") ?? "?"
}

func pacedRun(mode: AuditConfiguration.Durability?, concurrency: Int, rate: Int, seconds: Double, key: AuditSigningKey)
  async throws
  -> PacedMeasurement
{
  let directory = try fresh("paced-\(mode?.rawValue ?? "none")-\(concurrency)")
  let log: AuditLog? = try mode.map { mode in
    var config = AuditConfiguration(directory: directory, keyFile: "")
    config.durability = mode
    return try AuditLog.open(configuration: config, key: key)
  }
  let interval = Duration.nanoseconds(Int64(1e9 * Double(concurrency) / Double(max(rate, 1))))
  let clock = ContinuousClock()
  let end = clock.now + .nanoseconds(Int64(seconds * 1e9))
  let cpu0 = cpuMicros()
  let cs0 = contextSwitches()
  let start = clock.now
  let records = try await withThrowingTaskGroup(of: Int.self) { group in
    for t in 0..<concurrency {
      group.addTask {
        var next = clock.now + interval * Double(t) / Double(concurrency)
        var n = 0
        while next < end {
          try await clock.sleep(until: next)
          if let log { _ = try await log.append(sampleRecord(t * 1_000_000 + n)) }
          n += 1
          next += interval
        }
        return n
      }
    }
    return try await group.reduce(0, +)
  }
  let elapsed = start.duration(to: clock.now)
  let cpu = cpuMicros() - cpu0
  let cs1 = contextSwitches()
  let secondsTaken = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
  if let log {
    await log.close()
    _ = try AuditVerifier.verify(directory: directory, key: key.verifyingKey)
  }
  let n = Double(max(records, 1))
  return PacedMeasurement(
    rate: n / secondsTaken, cpu: cpu / n, voluntary: Double(cs1.voluntary - cs0.voluntary) / n,
    involuntary: Double(cs1.involuntary - cs0.involuntary) / n)
}
