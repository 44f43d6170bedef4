import Foundation
import Testing

@testable import PalisadeAudit

#if canImport(Glibc)
  import Glibc
#endif

let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
  .deletingLastPathComponent().path

/// The real `palisade audit` subcommands, with an independent Python check and openssl.
@Suite(.serialized) struct AuditCLITests {
  static var binary: String {
    ProcessInfo.processInfo.environment["PALISADE_BIN"] ?? "\(repositoryRoot)/.build/debug/palisade"
  }
  static let python = ProcessInfo.processInfo.environment["PALISADE_PYTHON"] ?? "/usr/bin/python3"
  static let checker = "\(repositoryRoot)/Tests/Interop/rfc6962_check.py"

  struct Result {
    var status: Int32
    var stdout: String
    var stderr: String
  }

  static func run(_ executable: String, _ arguments: [String], stdin: String? = nil) throws -> Result {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    let out = Pipe()
    let err = Pipe()
    let input = Pipe()
    process.standardOutput = out
    process.standardError = err
    process.standardInput = input
    try process.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    // Read both pipes to the end before waiting, so a large output cannot block the child.
    let errData = LockedData()
    let errThread = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
    errThread.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    while !errData.done { usleep(1000) }
    return Result(
      status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
      stderr: String(decoding: errData.value, as: UTF8.self))
  }

  final class LockedData: @unchecked Sendable {
    private let lock = NSLock()
    private var data = Data()
    private var finished = false
    func set(_ d: Data) {
      lock.withLock {
        data = d
        finished = true
      }
    }
    var done: Bool { lock.withLock { finished } }
    var value: Data { lock.withLock { data } }
  }

  static func audit(_ arguments: [String]) throws -> Result { try run(binary, ["audit"] + arguments) }

  /// A key pair made by `palisade audit keygen`.
  static func keygen(_ scratch: Scratch) throws -> (key: String, pub: String) {
    let prefix = scratch.path + "/audit"
    let r = try audit(["keygen", "--out", prefix])
    #expect(r.status == 0, "\(r.stderr)")
    return (prefix + ".key", prefix + ".pub.pem")
  }

  @Test func keygenWritesAPrivateKeyOnlyItsOwnerCanReadThatOpenSSLAccepts() throws {
    let scratch = try Scratch()
    let (key, pub) = try Self.keygen(scratch)
    var info = stat()
    let statResult = stat(key, &info)
    #expect(statResult == 0)
    #expect(info.st_mode & 0o777 == 0o600)
    #expect(try Self.run("/usr/bin/openssl", ["pkey", "-in", key, "-noout"]).status == 0)
    let derived = try Self.run("/usr/bin/openssl", ["pkey", "-in", key, "-pubout"])
    #expect(derived.stdout == (try String(contentsOfFile: pub, encoding: .utf8)))
    // Never overwritten.
    #expect(try Self.audit(["keygen", "--out", scratch.path + "/audit"]).status == 1)
  }

  @Test func verifyProveAndConsistencyAgreeWithPythonAndOpenSSL() throws {
    let scratch = try Scratch()
    let (key, pub) = try Self.keygen(scratch)
    let bench = try Self.audit(
      [
        "append-bench", scratch.log, "--key", key, "--mode", "sync", "--count", "300", "--concurrency", "1",
        "--checkpoint-every",
        "100", "--segment-max-bytes", "8192", "--quiet",
      ])
    #expect(bench.status == 0, "\(bench.stderr)")
    let verify = try Self.audit(["verify", scratch.log, "--key", pub])
    #expect(verify.status == 0, "\(verify.stderr)")
    #expect(
      verify.stdout.contains("audit log OK: 300 records") && verify.stdout.contains("3 checkpoints"), "\(verify.stdout)"
    )

    for (index, checkpoint) in [("0", "latest"), ("123", "latest"), ("99", "100"), ("150", "200"), ("299", "300")] {
      let prove = try Self.audit(["prove", scratch.log, "--key", pub, "--index", index, "--checkpoint", checkpoint])
      #expect(prove.status == 0, "\(prove.stderr)")
      let check = try Self.run(Self.python, [Self.checker, "inclusion", "-"], stdin: prove.stdout)
      #expect(check.status == 0 && check.stdout.contains("inclusion OK"), "\(check.stderr)\n\(prove.stdout)")
      // The same proof with one hash changed is refused by the independent check.
      var doc = try #require(try JSONSerialization.jsonObject(with: Data(prove.stdout.utf8)) as? [String: Any])
      if var path = doc["audit_path"] as? [String], let first = path.first {
        path[0] = (first.hasPrefix("0") ? "1" : "0") + first.dropFirst()
        doc["audit_path"] = path
        let tampered = String(decoding: try JSONSerialization.data(withJSONObject: doc), as: UTF8.self)
        #expect(try Self.run(Self.python, [Self.checker, "inclusion", "-"], stdin: tampered).status == 1)
      }
    }
    #expect(try Self.audit(["prove", scratch.log, "--key", pub, "--index", "150", "--checkpoint", "100"]).status == 1)
    #expect(try Self.audit(["prove", scratch.log, "--key", pub, "--index", "1", "--checkpoint", "150"]).status == 1)

    for (from, to) in [("100", "300"), ("37", "300"), ("1", "200"), ("200", "300"), ("64", "128"), ("300", "300")] {
      let c = try Self.audit(["consistency", scratch.log, "--key", pub, "--from", from, "--to", to])
      #expect(c.status == 0, "\(c.stderr)")
      let check = try Self.run(Self.python, [Self.checker, "consistency", "-"], stdin: c.stdout)
      #expect(check.status == 0 && check.stdout.contains("consistency OK"), "\(check.stderr)\n\(c.stdout)")
    }
    let whole = try Self.run(Self.python, [Self.checker, "log", scratch.log])
    #expect(
      whole.status == 0 && whole.stdout.contains("OK: 300 records, 3 checkpoints match"),
      "\(whole.stdout)\(whole.stderr)")

    // openssl verifies the latest checkpoint's Ed25519 signature over the note text.
    let cpBytes = try POSIXFile.readAll(scratch.log + "/" + LogFiles.checkpoints)
    let note = String(decoding: Frame.scan(cpBytes, firstIndex: 0).frames.last?.payload ?? [], as: UTF8.self)
    let parts = note.components(separatedBy: "\n\n")
    let sigLine = parts[1].trimmingCharacters(in: .newlines).split(separator: " ")
    let blob = try #require(Data(base64Encoded: String(sigLine[2])))
    try Data((parts[0] + "\n").utf8).write(to: URL(fileURLWithPath: scratch.path + "/note.txt"))
    try blob.dropFirst(4).write(to: URL(fileURLWithPath: scratch.path + "/note.sig"))
    let ossl = try Self.run(
      "/usr/bin/openssl",
      [
        "pkeyutl", "-verify", "-pubin", "-inkey", pub, "-rawin", "-in", scratch.path + "/note.txt", "-sigfile",
        scratch.path + "/note.sig",
      ])
    #expect(ossl.status == 0 && ossl.stdout.contains("Signature Verified Successfully"), "\(ossl.stdout)\(ossl.stderr)")

    // One byte changed: exit 1 naming the record, segment and offset; the Python check fails too.
    let seg = try #require(try segmentPaths(scratch.log).dropFirst().first)
    let (bytes, frames) = try framesOf(seg)
    var changed = bytes
    changed[Int(frames[3].offset) + 40] ^= 1
    try write(changed, seg)
    let bad = try Self.audit(["verify", scratch.log, "--key", pub])
    #expect(bad.status == 1)
    #expect(
      bad.stderr.contains("record \(frames[3].index)") && bad.stderr.contains((seg as NSString).lastPathComponent)
        && bad.stderr.contains("offset \(frames[3].offset)"), "\(bad.stderr)")
    #expect(try Self.run(Self.python, [Self.checker, "log", scratch.log]).status == 1)

    // The wrong key.
    let other = try Self.audit(["keygen", "--out", scratch.path + "/other"])
    #expect(other.status == 0)
    try write(bytes, seg)
    #expect(try Self.audit(["verify", scratch.log, "--key", pub]).status == 0)
    let wrong = try Self.audit(["verify", scratch.log, "--key", scratch.path + "/other.pub.pem"])
    #expect(wrong.status == 1 && wrong.stderr.contains("no signature by key"), "\(wrong.stderr)")
    // The verifier key form works too.
    #expect(try Self.audit(["verify", scratch.log, "--key", scratch.path + "/audit.vkey"]).status == 0)
  }

  /// kill -9 during heavy appends: the restart recovers, the log verifies, and in sync mode every index the
  /// process printed (printed only after `append` returned) is in the log.
  @Test(arguments: ["sync", "batched", "sync"])
  func killDuringHeavyAppendsLosesNothingAcknowledged(mode: String) async throws {
    let scratch = try Scratch()
    let (key, pub) = try Self.keygen(scratch)
    let outPath = scratch.path + "/acks.txt"
    _ = FileManager.default.createFile(atPath: outPath, contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: Self.binary)
    process.arguments = [
      "audit", "append-bench", scratch.log, "--key", key, "--mode", mode, "--count", "100000000", "--concurrency", "32",
      "--segment-max-bytes", "65536", "--checkpoint-every", "500",
    ]
    process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: outPath))
    process.standardError = FileHandle.nullDevice
    try process.run()
    let deadline = ContinuousClock.now + .seconds(120)
    var size = 0
    // Enough acknowledged appends that several segments and checkpoints exist, then SIGKILL mid-stream.
    while size < 60_000 && process.isRunning && ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(20))
      size = (try? FileManager.default.attributesOfItem(atPath: outPath)[.size] as? Int) ?? 0
    }
    #expect(process.isRunning, "append-bench ended early")
    kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
    #expect(process.terminationReason == .uncaughtSignal)

    let text = try String(contentsOfFile: outPath, encoding: .utf8)
    // Only whole lines were acknowledged (a line cut by the kill is ignored).
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
    let acked = lines.compactMap { UInt64($0) }
    #expect(acked.count > 5000)

    var config = AuditConfiguration(directory: scratch.log, keyFile: key)
    config.segmentMaxBytes = 65536
    config.durability = mode == "sync" ? .sync : .batched
    let log = try AuditLog.open(configuration: config)
    let count = log.recovery.recordCount
    await log.close()
    if mode == "sync" {
      let missing = acked.filter { $0 >= count }
      #expect(missing.isEmpty, "\(missing.count) acknowledged records lost (log holds \(count))")
    }
    let verify = try Self.audit(["verify", scratch.log, "--key", pub])
    #expect(verify.status == 0, "\(verify.stderr)")
    #expect(verify.stdout.contains("audit log OK: \(count) records"), "\(verify.stdout)")
    let python = try Self.run(Self.python, [Self.checker, "log", scratch.log])
    #expect(python.status == 0, "\(python.stderr)")
  }
}
