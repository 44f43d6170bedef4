import ArgumentParser
import Foundation
import PalisadeAudit

#if canImport(Glibc)
import Glibc
#endif

/// `palisade audit`: verify the tamper-evident audit log, prove inclusion and consistency, make audit keys.
struct AuditCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "audit",
    abstract: "Verify the audit log, print inclusion and consistency proofs, make audit keys.",
    discussion: """
      The log is a directory of segments and a checkpoints file (docs/audit.md). Exit status: 0 on success,
      1 when the log or a proof does not verify (the first bad record, file and offset are named), 2 on usage errors.
      """,
    subcommands: [Verify.self, Prove.self, Consistency.self, Keygen.self, AppendBench.self, Bench.self]
  )

  static func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("palisade audit: \(message)\n".utf8))
    return ExitCode(1)
  }

  static func printJSON(_ object: [String: Any]) throws {
    let data = try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    print(String(decoding: data, as: UTF8.self))
  }

  struct KeyOptions: ParsableArguments {
    @Option(help: "The audit public key: PEM (Ed25519 SubjectPublicKeyInfo) or a signed-note verifier key file.")
    var key: String
    @Option(help: "The key name / checkpoint origin (for a PEM key; a verifier key carries its name).")
    var origin = AuditConfiguration.defaults.origin

    func load() throws -> AuditVerifyingKey {
      do { return try AuditVerifyingKey.load(path: key, name: origin) } catch { throw ValidationError("\(error)") }
    }
  }

  static func verified(_ dir: String, _ options: KeyOptions) throws -> AuditVerifier.VerifiedLog {
    let key = try options.load()
    do { return try AuditVerifier.verify(directory: dir, key: key, origin: key.name) } catch {
      throw fail("verification FAILED: \(error)")
    }
  }

  struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Recompute the Merkle tree from the records and check every frame, record and signed checkpoint.")
    @Argument(help: "The log directory.") var logDir: String
    @OptionGroup var keyOptions: KeyOptions

    func run() throws {
      let log = try AuditCommand.verified(logDir, keyOptions)
      var line = "audit log OK: \(log.recordCount) records in \(log.segmentCount) segments, \(log.checkpoints.count) checkpoints"
      if let cp = log.checkpoints.last {
        line += "; latest checkpoint: size \(cp.treeSize), root \(Data(cp.rootHash).base64EncodedString())"
      }
      if log.uncheckpointed > 0 { line += "; \(log.uncheckpointed) records after the latest checkpoint (not yet signed)" }
      print(line)
    }
  }

  struct Prove: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print an inclusion proof (JSON) for one record against a signed checkpoint.")
    @Argument(help: "The log directory.") var logDir: String
    @OptionGroup var keyOptions: KeyOptions
    @Option(help: "The record's index.") var index: UInt64
    @Option(help: "The checkpoint: latest, or the tree size of one.") var checkpoint = "latest"

    func run() throws {
      let log = try AuditCommand.verified(logDir, keyOptions)
      var size: UInt64?
      if checkpoint != "latest" {
        guard let s = UInt64(checkpoint) else { throw ValidationError("--checkpoint must be latest or a tree size") }
        size = s
      }
      do { try AuditCommand.printJSON(try log.inclusionProof(index: index, checkpointSize: size).json) } catch let e as AuditError {
        throw AuditCommand.fail("\(e)")
      }
    }
  }

  struct Consistency: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print a consistency proof (JSON) between the trees of two sizes.")
    @Argument(help: "The log directory.") var logDir: String
    @OptionGroup var keyOptions: KeyOptions
    @Option(help: "The smaller tree size.") var from: UInt64
    @Option(help: "The larger tree size (default: the latest checkpoint's).") var to: UInt64?

    func run() throws {
      let log = try AuditCommand.verified(logDir, keyOptions)
      do { try AuditCommand.printJSON(try log.consistencyProof(from: from, to: to).json) } catch let e as AuditError {
        throw AuditCommand.fail("\(e)")
      }
    }
  }

  struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Make an Ed25519 audit key pair: PREFIX.key (PKCS#8 PEM, mode 0600), PREFIX.pub.pem, PREFIX.vkey.")
    @Option(help: "Output path prefix.") var out: String
    @Option(help: "The key name (the log's origin).") var origin = AuditConfiguration.defaults.origin

    func run() throws {
      let key: AuditSigningKey
      do { key = try AuditSigningKey.generate(name: origin) } catch { throw ValidationError("\(error)") }
      let privatePath = out + ".key"
      let fd = open(privatePath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
      guard fd >= 0 else { throw AuditCommand.fail("cannot create \(privatePath) (it must not exist yet)") }
      let pem = Array(key.privateKeyPEM.utf8)
      let written = pem.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
      let synced = fsync(fd)
      close(fd)
      guard written == pem.count, synced == 0 else { throw AuditCommand.fail("cannot write \(privatePath)") }
      do {
        try key.verifyingKey.publicKeyPEM.write(toFile: out + ".pub.pem", atomically: true, encoding: .utf8)
        try (key.verifyingKey.verifierKey + "\n").write(toFile: out + ".vkey", atomically: true, encoding: .utf8)
      } catch { throw AuditCommand.fail("cannot write the public key: \(error)") }
      print("\(privatePath) \(out).pub.pem \(out).vkey")
      print(key.verifyingKey.verifierKey)
    }
  }

  /// A realistic call record for load tests (no tensor data, as ever).
  static func sampleRecord(_ n: Int) -> AuditRecord {
    AuditRecord(
      kind: .call, principal: "spiffe://palisade.dev/ns/demo/sa/client-a",
      certificateThumbprint: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", tokenID: "tok-\(n)",
      rpc: "ModelInfer", model: "digits", version: "1",
      manifestDigest: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
      inputSHA256: "fcde2b2edba56bf408601fb721fe9b5c338d10ee429ea04fae5511b68fbf8fb9",
      outputSHA256: "baa5a0964d3320fbc0c6a922140453c8513ea24ab8fd0577034804a967248096", status: "OK",
      reason: "rule demo-callers", latencyMicros: 812, requestID: "req-\(n)")
  }

  struct AppendBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      commandName: "append-bench",
      abstract: "Append COUNT records from CONCURRENCY tasks, printing each acknowledged index (tests, benchmarks).",
      discussion: "Each index is printed, one per line and unbuffered, only after `append` returned it.",
      shouldDisplay: false)
    @Argument(help: "The log directory.") var logDir: String
    @Option(help: "The audit private key.") var key: String
    @Option(help: "sync or batched.") var mode = "sync"
    @Option var count = 10_000
    @Option var concurrency = 8
    @Option var segmentMaxBytes: UInt64 = 1 << 20
    @Option var checkpointEvery = 1000
    @Option var origin = AuditConfiguration.defaults.origin
    @Flag(help: "Print only the summary.") var quiet = false

    func run() async throws {
      guard let durability = AuditConfiguration.Durability(rawValue: mode) else { throw ValidationError("--mode is sync or batched") }
      var config = AuditConfiguration(directory: logDir, keyFile: key)
      config.durability = durability
      config.segmentMaxBytes = segmentMaxBytes
      config.checkpointEveryRecords = checkpointEvery
      config.origin = origin
      let log: AuditLog
      do { log = try AuditLog.open(configuration: config) } catch { throw AuditCommand.fail("\(error)") }
      if log.recovery.truncatedBytes > 0 || log.recovery.truncatedCheckpointBytes > 0 {
        FileHandle.standardError.write(Data("recovered: \(log.recovery)\n".utf8))
      }
      let start = ContinuousClock.now
      let quiet = self.quiet
      let perTask = count / max(1, concurrency)
      try await withThrowingTaskGroup(of: Void.self) { group in
        for t in 0..<max(1, concurrency) {
          let n = t == 0 ? count - perTask * (max(1, concurrency) - 1) : perTask
          group.addTask {
            for i in 0..<n {
              let index = try await log.append(AuditCommand.sampleRecord(t * 1_000_000 + i))
              if !quiet {
                let line = Array("\(index)\n".utf8)
                _ = line.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
              }
            }
          }
        }
        try await group.waitForAll()
      }
      let elapsed = start.duration(to: .now)
      await log.close()
      let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
      FileHandle.standardError.write(
        Data("appended \(count) records (\(mode), concurrency \(concurrency)) in \(String(format: "%.3f", seconds)) s: \(Int(Double(count) / seconds))/s\n".utf8))
    }
  }

  struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Benchmark appends (sync and batched, 1/8/32 appenders) against raw write+fsync and buffered writes.",
      shouldDisplay: false)
    @Argument(help: "A scratch directory (emptied per run).") var dir: String
    @Option var count = 20_000
    @Option(help: "Records for the fsync-per-record runs (slow).") var syncCount = 3000

    func run() async throws {
      let key = try AuditSigningKey.generate(name: AuditConfiguration.defaults.origin)
      let payload = AuditCommand.sampleRecord(1).canonicalJSON()
      print("record: \(payload.count) bytes of canonical JSON")
      // Caller-side cost: canonical JSON + leaf hash.
      let encodeStart = cpuMicros()
      var sink = 0
      for i in 0..<count { sink &+= Merkle.leafHash(AuditCommand.sampleRecord(i).canonicalJSON())[0] == 0 ? 1 : 0 }
      let encodeCost = (cpuMicros() - encodeStart) / Double(count)
      print("caller cost (canonical JSON + leaf hash): \(String(format: "%.2f", encodeCost)) µs/record (\(sink % 2))")
      let rawSync = try raw(payload: payload, count: syncCount, fsyncEach: true)
      let rawBuffered = try raw(payload: payload, count: count, fsyncEach: false)
      print("| run | appenders | records | appends/s | CPU µs/append | vs raw fsync/record | vs raw buffered write |")
      print("|---|---:|---:|---:|---:|---:|---:|")
      func row(_ name: String, _ c: String, _ n: Int, _ r: (rate: Double, cpu: Double)) {
        print("| \(name) | \(c) | \(n) | \(Int(r.rate)) | \(String(format: "%.1f", r.cpu)) | \(String(format: "%.2f", r.rate / rawSync.rate)) | \(String(format: "%.3f", r.rate / rawBuffered.rate)) |")
      }
      row("raw write+fdatasync per record", "1", syncCount, rawSync)
      row("raw buffered write (no fsync)", "1", count, rawBuffered)
      for mode in AuditConfiguration.Durability.allCases {
        for c in [1, 8, 32] {
          let n = mode == .sync && c == 1 ? syncCount : count
          row("AuditLog \(mode.rawValue)", "\(c)", n, try await audit(mode: mode, concurrency: c, count: n, key: key))
        }
      }
    }

    func cpuMicros() -> Double {
      var usage = rusage()
      getrusage(RUSAGE_SELF.rawValue, &usage)
      return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1e6 + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec)
    }

    func fresh(_ name: String) throws -> String {
      let path = dir + "/" + name
      try? FileManager.default.removeItem(atPath: path)
      try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
      return path
    }

    func raw(payload: [UInt8], count: Int, fsyncEach: Bool) throws -> (rate: Double, cpu: Double) {
      let path = try fresh("raw") + "/raw.log"
      let fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o600)
      guard fd >= 0 else { throw AuditCommand.fail("cannot create \(path)") }
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
      return rate(count, start, cpu0)
    }

    func rate(_ count: Int, _ start: ContinuousClock.Instant, _ cpu0: Double) -> (rate: Double, cpu: Double) {
      let elapsed = start.duration(to: .now)
      let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
      return (Double(count) / seconds, (cpuMicros() - cpu0) / Double(count))
    }

    func audit(mode: AuditConfiguration.Durability, concurrency: Int, count: Int, key: AuditSigningKey) async throws -> (rate: Double, cpu: Double) {
      var config = AuditConfiguration(directory: try fresh("log-\(mode.rawValue)-\(concurrency)"), keyFile: "")
      config.durability = mode
      let log = try AuditLog.open(configuration: config, key: key)
      let cpu0 = cpuMicros()
      let start = ContinuousClock.now
      try await withThrowingTaskGroup(of: Void.self) { group in
        for t in 0..<concurrency {
          group.addTask {
            for i in 0..<(count / concurrency) { _ = try await log.append(AuditCommand.sampleRecord(t * 1_000_000 + i)) }
          }
        }
        try await group.waitForAll()
      }
      // Batched appends are acknowledged before they are durable; the rate counts acknowledgements, and close()
      // (the final flush) is outside the timing.
      let result = rate(count / concurrency * concurrency, start, cpu0)
      await log.close()
      return result
    }
  }
}
