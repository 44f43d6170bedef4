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
      1 when the log or a proof does not verify (the first bad record, file and offset are named), 64 on usage
      errors (bad options, an unreadable key).
      """,
    subcommands: [Verify.self, Prove.self, Consistency.self, Keygen.self, AppendBench.self]
  )

  static func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("palisade audit: \(message)\n".utf8))
    return ExitCode(1)
  }

  static func printJSON(_ object: [String: Any]) throws {
    let data = try JSONSerialization.data(
      withJSONObject: object, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
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
      var line =
        "audit log OK: \(log.recordCount) records in \(log.segmentCount) segments, \(log.checkpoints.count) checkpoints"
      if let cp = log.checkpoints.last {
        line += "; latest checkpoint: size \(cp.treeSize), root \(Data(cp.rootHash).base64EncodedString())"
      }
      if log.uncheckpointed > 0 {
        line += "; \(log.uncheckpointed) records after the latest checkpoint (not yet signed)"
      }
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
      do { try AuditCommand.printJSON(try log.inclusionProof(index: index, checkpointSize: size).json) } catch let e
        as AuditError
      {
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
      guard let durability = AuditConfiguration.Durability(rawValue: mode) else {
        throw ValidationError("--mode is sync or batched")
      }
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
        Data(
          "appended \(count) records (\(mode), concurrency \(concurrency)) in \(String(format: "%.3f", seconds)) s: \(Int(Double(count) / seconds))/s\n"
            .utf8))
    }
  }
}
