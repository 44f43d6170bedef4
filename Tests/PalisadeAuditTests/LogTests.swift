import Foundation
import Testing

@testable import PalisadeAudit

/// A scratch directory removed when the test's value goes away.
final class Scratch: @unchecked Sendable {
  let path: String
  init() throws {
    path = FileManager.default.temporaryDirectory.appendingPathComponent("palisade-audit-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  }
  deinit { try? FileManager.default.removeItem(atPath: path) }
  var log: String { path + "/log" }
}

func record(_ i: Int) -> AuditRecord {
  AuditRecord(
    kind: i % 7 == 0 ? .modelLoad : .call, principal: "spiffe://palisade.test/sa/c\(i % 3)", tokenID: "jti-\(i)",
    rpc: "ModelInfer",
    model: "digits", version: "1", inputSHA256: String(repeating: "a", count: 64),
    status: i % 5 == 0 ? "PERMISSION_DENIED" : "OK",
    reason: i % 5 == 0 ? "rule client-b-no-infer" : nil, latencyMicros: Int64(i), requestID: "r\(i)")
}

func makeLog(
  _ dir: String, key: AuditSigningKey, mode: AuditConfiguration.Durability = .sync, segmentMaxBytes: UInt64 = 1 << 20,
  checkpointEvery: Int = 10
) throws -> AuditLog {
  var config = AuditConfiguration(directory: dir, keyFile: "")
  config.durability = mode
  config.segmentMaxBytes = segmentMaxBytes
  config.checkpointEveryRecords = checkpointEvery
  return try AuditLog.open(configuration: config, key: key)
}

func fill(_ log: AuditLog, _ range: Range<Int>, concurrency: Int = 4) async throws -> [UInt64] {
  try await withThrowingTaskGroup(of: [UInt64].self) { group in
    for t in 0..<concurrency {
      group.addTask {
        var got: [UInt64] = []
        for i in range where i % concurrency == t { got.append(try await log.append(record(i))) }
        return got
      }
    }
    var all: [UInt64] = []
    for try await g in group { all += g }
    return all.sorted()
  }
}

/// Frames of a segment file, for tampering.
func framesOf(_ path: String) throws -> (bytes: [UInt8], frames: [(index: UInt64, offset: UInt64, payload: [UInt8])]) {
  let bytes = try POSIXFile.readAll(path)
  let first = Frame.readBE(bytes, at: 8, as: UInt64.self)
  return (bytes, Frame.scan(bytes, firstIndex: first).frames)
}

func segmentPaths(_ dir: String) throws -> [String] { try LogFiles.segments(in: dir).map { dir + "/" + $0.name } }

func write(_ bytes: [UInt8], _ path: String) throws { try Data(bytes).write(to: URL(fileURLWithPath: path)) }

func verifyFailure(_ dir: String, _ key: AuditVerifyingKey) -> AuditVerifier.Failure? {
  do {
    _ = try AuditVerifier.verify(directory: dir, key: key)
    return nil
  } catch { return error }
}

@Suite struct LogTests {
  let key: AuditSigningKey
  init() throws { key = try AuditSigningKey.generate(name: "palisade.dev/audit") }

  /// A log of 100 records across several segments, checkpoints every 10.
  func populated(_ scratch: Scratch, count: Int = 100) async throws {
    let log = try makeLog(scratch.log, key: key, segmentMaxBytes: 4096, checkpointEvery: 5)
    let indices = try await fill(log, 0..<count)
    #expect(indices == (0..<UInt64(count)).map { $0 })
    await log.close()
  }

  @Test func appendsVerifyAcrossSegmentsCheckpointsAndReopen() async throws {
    let scratch = try Scratch()
    let log = try makeLog(scratch.log, key: key, segmentMaxBytes: 4096)
    let indices = try await fill(log, 0..<150, concurrency: 8)
    #expect(indices == (0..<150).map { UInt64($0) })
    await log.close()
    #expect(log.latestCheckpoint()?.treeSize == 150)
    await #expect(throws: AuditError.self) { _ = try await log.append(record(0)) }
    let verified = try AuditVerifier.verify(directory: scratch.log, key: key.verifyingKey)
    #expect(verified.recordCount == 150 && verified.segmentCount > 3 && verified.checkpoints.count >= 5)
    #expect(verified.checkpoints.last?.rootHash == verified.tree.root(treeSize: 150))

    // Reopen: the tree continues where it stopped, with a checkpoint consistent with the old ones.
    let again = try makeLog(scratch.log, key: key, mode: .batched, segmentMaxBytes: 4096)
    #expect(again.recovery.recordCount == 150 && again.recovery.truncatedBytes == 0)
    #expect(try await again.append(record(150)) == 150)
    await again.close()
    let v2 = try AuditVerifier.verify(directory: scratch.log, key: key.verifyingKey)
    #expect(v2.recordCount == 151 && v2.checkpoints.last?.treeSize == 151)
    let proof = try v2.inclusionProof(index: 42)
    #expect(
      Merkle.verifyInclusion(
        leafHash: proof.leafHash, index: 42, treeSize: 151, proof: proof.auditPath, root: proof.rootHash))
    let c = try v2.consistencyProof(from: 150, to: 151)
    #expect(
      Merkle.verifyConsistency(
        firstSize: 150, firstRoot: c.firstRoot, secondSize: 151, secondRoot: c.secondRoot, proof: c.proof))
  }

  /// Checkpoints come on time even when no more records arrive (and, in batched mode, only after the interval
  /// fsync made the records durable). A liveness poll with a generous bound, not a timing assertion.
  @Test(arguments: [AuditConfiguration.Durability.sync, .batched])
  func idleLogsAreCheckpointedAfterTheInterval(mode: AuditConfiguration.Durability) async throws {
    let scratch = try Scratch()
    var config = AuditConfiguration(directory: scratch.log, keyFile: "")
    config.durability = mode
    config.checkpointEveryRecords = 1000
    config.checkpointInterval = .milliseconds(200)
    config.batchInterval = .milliseconds(50)
    let log = try AuditLog.open(configuration: config, key: key)
    for i in 0..<3 { _ = try await log.append(record(i)) }
    let deadline = ContinuousClock.now + .seconds(30)
    while log.latestCheckpoint()?.treeSize != 3 && ContinuousClock.now < deadline {
      try await Task.sleep(for: .milliseconds(20))
    }
    #expect(log.latestCheckpoint()?.treeSize == 3)
    // Nothing new: no further checkpoint, however long the log idles (several intervals here).
    try await Task.sleep(for: .milliseconds(700))
    let checkpoints = try framesOf(scratch.log + "/" + LogFiles.checkpoints).frames
    let sizes = try checkpoints.map {
      try SignedCheckpoint.verify(note: String(decoding: $0.payload, as: UTF8.self), key: key.verifyingKey).treeSize
    }
    #expect(sizes.last == 3 && sizes.filter { $0 == 3 }.count == 1, "one checkpoint at size 3, none repeated: \(sizes)")
    await log.close()
    #expect(verifyFailure(scratch.log, key.verifyingKey) == nil)
  }

  @Test func oneWriterPerDirectory() async throws {
    let scratch = try Scratch()
    let log = try makeLog(scratch.log, key: key)
    #expect(throws: AuditError.inUse(scratch.log)) { _ = try makeLog(scratch.log, key: key) }
    _ = try await log.append(record(0))
    await log.close()
    let again = try makeLog(scratch.log, key: key)
    await again.close()
  }

  @Test func batchedModeWritesEverythingByClose() async throws {
    let scratch = try Scratch()
    let log = try makeLog(scratch.log, key: key, mode: .batched, checkpointEvery: 1000)
    _ = try await fill(log, 0..<500, concurrency: 16)
    await log.close()
    let v = try AuditVerifier.verify(directory: scratch.log, key: key.verifyingKey)
    #expect(v.recordCount == 500 && v.checkpoints.last?.treeSize == 500)
  }

  /// Batched mode lets records gather for `writeDelay` before one write, and appends do not wake a busy writer;
  /// a record that finds the writer idle must still wake it: it reaches the segment file with no further append
  /// and no close(), and so does the next one after the writer went idle again.
  @Test func aLoneBatchedRecordIsWrittenWithoutFurtherAppends() async throws {
    let scratch = try Scratch()
    let log = try makeLog(scratch.log, key: key, mode: .batched, checkpointEvery: 1000)
    let segment = try #require(try segmentPaths(scratch.log).first)
    func size() -> Int { (try? FileManager.default.attributesOfItem(atPath: segment)[.size] as? Int) ?? 0 }
    for i in 0..<2 {
      let before = size()
      _ = try await log.append(record(i))
      // Normally written within the write delay (5 ms); the bound only keeps a broken build from hanging.
      var waited = 0
      while size() == before && waited < 200 {
        try await Task.sleep(for: .milliseconds(50))
        waited += 1
      }
      #expect(size() > before, "record \(i) was not written while the log stayed open")
    }
    await log.close()
    #expect(try AuditVerifier.verify(directory: scratch.log, key: key.verifyingKey).recordCount == 2)
  }

  /// Appends faster than the write delay: the queue length wakes the writer (writeBatchRecords), nothing is lost.
  @Test func batchedAppendsOutrunningTheWriteDelayAllLand() async throws {
    let scratch = try Scratch()
    var config = AuditConfiguration(directory: scratch.log, keyFile: "")
    config.durability = .batched
    config.writeDelay = .milliseconds(50)
    config.writeBatchRecords = 8
    config.checkpointEveryRecords = 100
    let log = try AuditLog.open(configuration: config, key: key)
    let indices = try await fill(log, 0..<600, concurrency: 16)
    #expect(Set(indices).count == 600)
    await log.close()
    let v = try AuditVerifier.verify(directory: scratch.log, key: key.verifyingKey)
    #expect(v.recordCount == 600 && v.checkpoints.last?.treeSize == 600)
  }

  @Test func changingAnyByteOfARecordFailsAtThatRecord() async throws {
    let scratch = try Scratch()
    try await populated(scratch)
    let segments = try segmentPaths(scratch.log)
    let (original, frames) = try framesOf(segments[2])
    // Every byte of one frame: magic, length, index, payload, CRC.
    let target = frames[1]
    let end = Int(target.offset) + Frame.overhead + target.payload.count
    for position in Int(target.offset)..<end {
      var bytes = original
      bytes[position] ^= 0x20
      try write(bytes, segments[2])
      let failure = verifyFailure(scratch.log, key.verifyingKey)
      #expect(failure?.index == target.index, "byte \(position): \(String(describing: failure))")
      #expect(failure?.file == (segments[2] as NSString).lastPathComponent)
      #expect(failure?.offset == target.offset)
      // The writer refuses to open a damaged log rather than append after it.
      #expect(throws: AuditError.self) { _ = try makeLog(scratch.log, key: key) }
    }
    try write(original, segments[2])
    #expect(verifyFailure(scratch.log, key.verifyingKey) == nil)
  }

  @Test func aRewrittenRecordWithAValidChecksumFailsAgainstTheSignedCheckpoint() async throws {
    let scratch = try Scratch()
    try await populated(scratch)
    let segments = try segmentPaths(scratch.log)
    let (bytes, frames) = try framesOf(segments[1])
    let target = frames[2]
    var altered = try AuditRecord.decodeCanonical(target.payload)
    altered.status = "OK"
    altered.reason = "rewritten"
    var out = Array(bytes[..<Int(target.offset)])
    Frame.encode(index: target.index, payload: altered.canonicalJSON(), into: &out)
    out += bytes[(Int(target.offset) + Frame.overhead + target.payload.count)...]
    try write(out, segments[1])
    let failure = try #require(verifyFailure(scratch.log, key.verifyingKey))
    // The first checkpoint that does not match names the range the altered record is in.
    let lo = try #require(failure.index)
    #expect(lo <= target.index, "\(failure)")
    #expect(failure.reason.contains("do not hash to the root"), "\(failure)")
  }

  @Test func deletedReorderedAndTruncatedRecordsAreDetected() async throws {
    let scratch = try Scratch()
    try await populated(scratch)
    let segments = try segmentPaths(scratch.log)
    let path = segments[1]
    let (bytes, frames) = try framesOf(path)
    func span(_ i: Int) -> Range<Int> {
      Int(frames[i].offset)..<(Int(frames[i].offset) + Frame.overhead + frames[i].payload.count)
    }

    // Delete frame 2.
    var deleted = bytes
    deleted.removeSubrange(span(2))
    try write(deleted, path)
    var failure = verifyFailure(scratch.log, key.verifyingKey)
    #expect(
      failure?.index == frames[2].index && failure?.reason.contains("expected") == true,
      "\(String(describing: failure))")

    // Swap frames 1 and 2.
    var swapped = Array(bytes[..<span(1).lowerBound])
    swapped += bytes[span(2)]
    swapped += bytes[span(1)]
    swapped += bytes[span(2).upperBound...]
    try write(swapped, path)
    failure = verifyFailure(scratch.log, key.verifyingKey)
    #expect(failure?.index == frames[1].index, "\(String(describing: failure))")

    // Cut 30 bytes out of the middle of frame 1.
    var cut = bytes
    cut.removeSubrange((span(1).lowerBound + 10)..<(span(1).lowerBound + 40))
    try write(cut, path)
    failure = verifyFailure(scratch.log, key.verifyingKey)
    #expect(failure?.index == frames[1].index, "\(String(describing: failure))")

    // A whole segment removed.
    try write(bytes, path)
    try FileManager.default.removeItem(atPath: path)
    failure = verifyFailure(scratch.log, key.verifyingKey)
    #expect(
      failure?.index == frames[0].index && failure?.reason.contains("segment") == true, "\(String(describing: failure))"
    )
    try write(bytes, path)
    #expect(verifyFailure(scratch.log, key.verifyingKey) == nil)

    // Signed records removed from the end: the checkpoints outnumber the records.
    let last = try #require(segmentPaths(scratch.log).last)
    let (lastBytes, lastFrames) = try framesOf(last)
    try write(Array(lastBytes[..<Int(lastFrames[lastFrames.count - 1].offset)]), last)
    failure = verifyFailure(scratch.log, key.verifyingKey)
    #expect(failure?.reason.contains("records were removed") == true, "\(String(describing: failure))")
  }

  @Test func aTornTailIsCutBackAtOpenAndTheLogVerifies() async throws {
    let scratch = try Scratch()
    try await populated(scratch)
    let last = try #require(segmentPaths(scratch.log).last)
    let (clean, _) = try framesOf(last)
    var partial: [UInt8] = []
    Frame.encode(index: 100, payload: record(100).canonicalJSON(), into: &partial)
    for torn in [Array(partial.prefix(7)), Array(partial.prefix(partial.count - 1)), [UInt8](repeating: 0, count: 300)]
    {
      try write(clean + torn, last)
      // Before recovery the verifier reports the torn tail where it starts.
      let failure = verifyFailure(scratch.log, key.verifyingKey)
      #expect(failure?.index == 100 && failure?.offset == UInt64(clean.count), "\(String(describing: failure))")
      let log = try makeLog(scratch.log, key: key, segmentMaxBytes: 4096)
      #expect(log.recovery.truncatedBytes == UInt64(torn.count) && log.recovery.recordCount == 100)
      await log.close()
      #expect(verifyFailure(scratch.log, key.verifyingKey) == nil)
      #expect(try POSIXFile.readAll(last) == clean)
    }
    // A torn checkpoint frame is cut back too.
    let cpPath = scratch.log + "/" + LogFiles.checkpoints
    let cpBytes = try POSIXFile.readAll(cpPath)
    try write(cpBytes + Array(partial.prefix(30)), cpPath)
    let log = try makeLog(scratch.log, key: key, segmentMaxBytes: 4096)
    #expect(log.recovery.truncatedCheckpointBytes == 30)
    _ = try await log.append(record(100))
    await log.close()
    #expect(verifyFailure(scratch.log, key.verifyingKey) == nil)
  }

  /// After a write or fsync error, bytes past the last fsync are of unknown state: reopening with the failed
  /// writer's durable end cuts them (complete frames, later segments, checkpoint frames alike) before recovery.
  @Test func reopeningRolledBackToTheDurableEndDropsUnsyncedBytes() async throws {
    let scratch = try Scratch()
    try await populated(scratch)
    var log = try makeLog(scratch.log, key: key, segmentMaxBytes: 4096)
    _ = try await log.appendDurable(record(100))
    let end = log.durableEnd
    #expect(end.records == 101 && log.failure == nil && !log.hasFailed)
    await log.close()
    // What a failed writer could leave behind: whole frames after the end, a new segment, a checkpoint frame.
    let segment = scratch.log + "/" + end.segment
    let synced = try POSIXFile.readAll(segment)
    var extra: [UInt8] = []
    Frame.encode(index: 101, payload: record(101).canonicalJSON(), into: &extra)
    try write(Array(synced.prefix(Int(end.segmentBytes))) + extra, segment)
    try AuditLog.createSegment(dir: scratch.log, firstIndex: 102)
    let cpPath = scratch.log + "/" + LogFiles.checkpoints
    let checkpoints = try POSIXFile.readAll(cpPath)
    try write(Array(checkpoints.prefix(Int(end.checkpointBytes))) + Array(repeating: 0x41, count: 50), cpPath)
    var config = AuditConfiguration(directory: scratch.log, keyFile: "")
    config.segmentMaxBytes = 4096
    log = try AuditLog.open(configuration: config, key: key, rollingBackTo: end)
    #expect(log.recovery.recordCount == 101, "\(log.recovery)")
    #expect(log.recovery.rolledBackBytes == UInt64(extra.count + Frame.headerSize + 50), "\(log.recovery)")
    #expect(try segmentPaths(scratch.log).last == segment)
    _ = try await log.append(record(101))
    await log.close()
    #expect(verifyFailure(scratch.log, key.verifyingKey) == nil)
  }

  @Test func tamperedCheckpointsAndWrongKeysFail() async throws {
    let scratch = try Scratch()
    try await populated(scratch)
    let cpPath = scratch.log + "/" + LogFiles.checkpoints
    let (bytes, frames) = try framesOf(cpPath)
    #expect(frames.count >= 10)

    // Wrong key (same name), and a key of another name.
    let other = try AuditSigningKey.generate(name: "palisade.dev/audit")
    #expect(verifyFailure(scratch.log, other.verifyingKey)?.reason.contains("no signature by key") == true)
    let renamed = try AuditVerifyingKey(pem: key.verifyingKey.publicKeyPEM, name: "other.origin")
    #expect(verifyFailure(scratch.log, renamed) != nil)

    // A signature byte changed (frame checksum recomputed so that the signature check is what fails).
    func rewrite(_ i: Int, _ change: (inout String) -> Void) throws {
      var note = String(decoding: frames[i].payload, as: UTF8.self)
      change(&note)
      var out = Array(bytes[..<Int(frames[i].offset)])
      Frame.encode(index: frames[i].index, payload: Array(note.utf8), into: &out)
      out += bytes[(Int(frames[i].offset) + Frame.overhead + frames[i].payload.count)...]
      try write(out, cpPath)
    }
    try rewrite(3) { note in
      let sigStart = note.range(of: "\u{2014} ")!.upperBound
      let afterName = note[sigStart...].firstIndex(of: " ")!
      let i = note.index(afterName, offsetBy: 12)
      note.replaceSubrange(i...i, with: note[i] == "A" ? "B" : "A")
    }
    var failure = verifyFailure(scratch.log, key.verifyingKey)
    #expect(
      failure?.reason.contains("checkpoint 3") == true && failure?.reason.contains("does not verify") == true,
      "\(String(describing: failure))")

    // The signed size changed: the signature no longer covers the text.
    try rewrite(2) { note in
      var lines = note.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
      lines[1] = String((Int(lines[1]) ?? 1) - 1)
      note = lines.joined(separator: "\n")
    }
    failure = verifyFailure(scratch.log, key.verifyingKey)
    #expect(failure?.reason.contains("checkpoint 2") == true, "\(String(describing: failure))")

    // A checkpoint frame dropped: the sequence breaks.
    var dropped = Array(bytes[..<Int(frames[4].offset)])
    dropped += bytes[Int(frames[5].offset)...]
    try write(dropped, cpPath)
    #expect(verifyFailure(scratch.log, key.verifyingKey)?.reason.contains("checkpoint 4") == true)
    try write(bytes, cpPath)
    #expect(verifyFailure(scratch.log, key.verifyingKey) == nil)
  }

  @Test func checkpointNotesFollowTheSignedNoteFormat() throws {
    let cp = try SignedCheckpoint.sign(
      origin: "palisade.dev/audit", treeSize: 8, rootHash: unhex(MerkleTests.roots[8]), key: key)
    let lines = cp.note.split(separator: "\n", omittingEmptySubsequences: false)
    #expect(
      lines[0] == "palisade.dev/audit" && lines[1] == "8" && lines[2] == "XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=")
    #expect(lines[3].hasPrefix("time ") && lines[4] == "" && lines[5].hasPrefix("\u{2014} palisade.dev/audit "))
    let vkey = key.verifyingKey.verifierKey
    #expect(vkey.hasPrefix("palisade.dev/audit+"))
    let parsed = try AuditVerifyingKey(verifierKey: vkey)
    #expect(try SignedCheckpoint.verify(note: cp.note, key: parsed) == cp)
    #expect(throws: AuditError.self) {
      _ = try AuditVerifyingKey(verifierKey: vkey.replacingOccurrences(of: "+", with: "+0", options: [], range: nil))
    }
  }

  @Test func badConfigurationsAndKeysAreRefused() throws {
    let scratch = try Scratch()
    var config = AuditConfiguration(directory: scratch.log, keyFile: scratch.path + "/missing.key")
    #expect(throws: AuditError.self) { _ = try AuditLog.open(configuration: config) }
    let keyPath = scratch.path + "/audit.key"
    _ = FileManager.default.createFile(
      atPath: keyPath, contents: Data(key.privateKeyPEM.utf8), attributes: [.posixPermissions: 0o644])
    config.keyFile = keyPath
    #expect(
      throws: AuditError.key(path: keyPath, reason: "is accessible by group or others (mode 644); run chmod 600 on it")
    ) {
      _ = try AuditLog.open(configuration: config)
    }
    // A Kubernetes Secret mounted for the pod's fsGroup: 0440, group = the process's own group. Group write, or a
    // group that is not the process's own, stays refused.
    let secretPath = scratch.path + "/secret-audit.key"
    _ = FileManager.default.createFile(
      atPath: secretPath, contents: Data(key.privateKeyPEM.utf8), attributes: [.posixPermissions: 0o440])
    #expect(
      try AuditSigningKey.load(path: secretPath, name: "palisade.dev/audit").verifyingKey.name == "palisade.dev/audit")
    try FileManager.default.setAttributes([.posixPermissions: 0o460], ofItemAtPath: secretPath)
    #expect(
      throws: AuditError.key(
        path: secretPath, reason: "is accessible by group or others (mode 460); run chmod 600 on it")
    ) {
      _ = try AuditSigningKey.load(path: secretPath, name: "palisade.dev/audit")
    }
    if getegid() != 65534 {
      try FileManager.default.setAttributes([.posixPermissions: 0o440], ofItemAtPath: secretPath)
      if chown(secretPath, geteuid(), 65534) == 0 {
        #expect(throws: AuditError.self) { _ = try AuditSigningKey.load(path: secretPath, name: "palisade.dev/audit") }
      }
    }
    config.segmentMaxBytes = 10
    #expect(throws: AuditError.self) { _ = try AuditLog.open(configuration: config, key: key) }
    config.segmentMaxBytes = 1 << 20
    config.writeDelay = .seconds(2)
    #expect(throws: AuditError.self) { _ = try AuditLog.open(configuration: config, key: key) }
    config.writeDelay = .milliseconds(5)
    config.writeBatchRecords = 0
    #expect(throws: AuditError.self) { _ = try AuditLog.open(configuration: config, key: key) }
    config.writeBatchRecords = 1024
    config.origin = "has space"
    #expect(throws: AuditError.self) { _ = try AuditLog.open(configuration: config, key: key) }
  }
}
