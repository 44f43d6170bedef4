import Foundation
import Synchronization

#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// How the audit log is kept. Every field has a safe default (`AuditConfiguration.defaults`).
public struct AuditConfiguration: Sendable {
  /// When an append is acknowledged.
  public enum Durability: String, Sendable, CaseIterable {
    /// `append` returns after an fsync covering its record; concurrent appends share one fsync (group commit).
    case sync
    /// `append` returns once the record is queued; the writer writes at once and fsyncs every
    /// `batchInterval` or `batchMaxRecords`. See docs/audit.md for the loss window.
    case batched
  }

  /// The log directory (`directory`); created 0700 if missing.
  public var directory: String
  /// Segments rotate when the next record would make them larger than this (`segment_max_bytes`).
  public var segmentMaxBytes: UInt64 = 64 << 20
  /// `durability`: sync or batched.
  public var durability: Durability = .sync
  /// `batch_interval_ms`: in batched mode, the longest time between fsyncs of written records.
  public var batchInterval: Duration = .milliseconds(100)
  /// `batch_max_records`: in batched mode, fsync after this many unsynced records even before the interval.
  public var batchMaxRecords: Int = 4096
  /// `checkpoint_every_records`: sign a checkpoint after this many new durable records...
  public var checkpointEveryRecords: Int = 1000
  /// `checkpoint_interval_seconds`: ...or this long after the last one, whichever comes first (only if the
  /// tree grew). A checkpoint is also written at `close()`.
  public var checkpointInterval: Duration = .seconds(10)
  /// `key_file`: the Ed25519 audit private key (PKCS#8 PEM, mode 0600).
  public var keyFile: String
  /// `origin`: the checkpoint origin line, and the signed-note key name.
  public var origin: String = "palisade.dev/audit"
  /// In batched mode, appends wait (as in sync mode, for the write) once this many records are queued.
  public var maxQueuedRecords: Int = 65_536
  /// Batched mode: once woken by a record, the writer lets records gather this long before it writes them with
  /// one `write(2)` (appends meanwhile do not wake it). Waking the writer thread for every record cost a futex
  /// wake, two context switches and a `write` per call; this bounds the wake-ups to about one per delay. It
  /// adds at most this much to the process-crash loss window (records acknowledged, not yet written).
  public var writeDelay: Duration = .milliseconds(5)
  /// Batched mode: a queue this long wakes the writer at once, whatever the delay.
  public var writeBatchRecords: Int = 1024

  public init(directory: String, keyFile: String) {
    self.directory = directory
    self.keyFile = keyFile
  }

  /// The defaults: `audit/` and `audit.key` relative to the working directory, sync durability, 64 MiB
  /// segments, a checkpoint every 1000 records or 10 s.
  public static let defaults = AuditConfiguration(directory: "audit", keyFile: "audit.key")

  func validate() throws {
    guard !directory.isEmpty else { throw AuditError.configuration("directory is empty") }
    guard segmentMaxBytes >= 4096 else { throw AuditError.configuration("segment_max_bytes must be at least 4096") }
    guard batchInterval > .zero, batchMaxRecords > 0 else {
      throw AuditError.configuration("batch_interval_ms and batch_max_records must be positive")
    }
    guard checkpointEveryRecords > 0, checkpointInterval > .zero else {
      throw AuditError.configuration("checkpoint_every_records and checkpoint_interval_seconds must be positive")
    }
    guard validKeyName(origin) else {
      throw AuditError.configuration("origin \"\(origin)\" must be non-empty with no spaces or '+'")
    }
    guard maxQueuedRecords > 0 else { throw AuditError.configuration("max_queued_records must be positive") }
    guard writeDelay >= .zero, writeDelay <= .seconds(1), writeBatchRecords > 0 else {
      throw AuditError.configuration("write_delay_ms must be between 0 and 1000 and write_batch_records positive")
    }
  }
}

/// What `AuditLog.open` found and repaired.
public struct AuditRecovery: Sendable, Equatable {
  /// Records in the log after opening.
  public var recordCount: UInt64
  /// Bytes cut from the end of the last segment (an interrupted append), and where.
  public var truncatedBytes: UInt64
  public var truncatedSegment: String?
  /// Bytes cut from the end of the checkpoints file.
  public var truncatedCheckpointBytes: UInt64
  /// Bytes (segments and checkpoints) written after the last successful fsync of a failed writer and dropped
  /// when the log was reopened with ``AuditLog/open(configuration:key:rollingBackTo:)``.
  public var rolledBackBytes: UInt64 = 0
}

/// Where a log was last known durable: everything up to here was fsynced. After a write or fsync error the
/// bytes beyond it are of unknown state (a failed fsync may leave pages in the cache that never reach the disk,
/// and a later read would see them until they are evicted); reopening with this end cuts them off.
public struct AuditDurableEnd: Sendable, Equatable {
  /// Records covered.
  public var records: UInt64
  /// The segment file being appended to, and its synced length.
  public var segment: String
  public var segmentBytes: UInt64
  /// The synced length of the checkpoints file.
  public var checkpointBytes: UInt64
}

/// The append-only, tamper-evident audit log. Records are leaves of an RFC 6962 Merkle tree; checkpoints of the
/// tree are signed with the audit key. One dedicated writer thread owns the files; `append` is cheap for the
/// caller (canonical JSON and a leaf hash on the caller's task, then a short critical section to take an index).
///
///     let log = try AuditLog.open(configuration: config)
///     let index = try await log.append(AuditRecord(kind: .call, principal: id, rpc: "ModelInfer", status: "OK"))
///     let checkpoint = log.latestCheckpoint()
///     await log.close()
///
/// Fail closed: after a write or fsync error every pending and later `append` throws `AuditError.failed`.
public final class AuditLog: Sendable {
  /// `AuditLog.Configuration` is `AuditConfiguration`.
  public typealias Configuration = AuditConfiguration

  private let state: WriterState
  /// What opening the log found and repaired.
  public let recovery: AuditRecovery
  /// The configuration it runs with.
  public let configuration: AuditConfiguration
  /// The public key that verifies its checkpoints.
  public let verifyingKey: AuditVerifyingKey

  private init(state: WriterState, recovery: AuditRecovery, configuration: AuditConfiguration, key: AuditVerifyingKey) {
    self.state = state
    self.recovery = recovery
    self.configuration = configuration
    self.verifyingKey = key
  }

  /// Opens (or creates) the log in `configuration.directory` with the key in `configuration.keyFile`: cuts a torn
  /// tail back to the last complete record, refuses any other damage, checks that the latest checkpoint is
  /// signed by the key and matches the records, and starts the writer.
  ///
  /// `rollingBackTo`: the ``durableEnd`` of a writer that failed; bytes written after it are cut off first (see
  /// ``AuditDurableEnd``), later segments removed. Only for reopening the same directory in the same process.
  public static func open(configuration: AuditConfiguration, rollingBackTo end: AuditDurableEnd? = nil) throws
    -> AuditLog
  {
    let key = try AuditSigningKey.load(path: configuration.keyFile, name: configuration.origin)
    return try open(configuration: configuration, key: key, rollingBackTo: end)
  }

  /// `open(configuration:)` with a key already in memory (tests, tools).
  public static func open(
    configuration: AuditConfiguration, key: AuditSigningKey, rollingBackTo end: AuditDurableEnd? = nil
  )
    throws -> AuditLog
  {
    try configuration.validate()
    guard key.name == configuration.origin else {
      throw AuditError.configuration("the key's name \(key.name) is not the origin \(configuration.origin)")
    }
    let dir = configuration.directory
    if !FileManager.default.fileExists(atPath: dir) {
      do {
        try FileManager.default.createDirectory(
          atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
      } catch { throw AuditError.io(path: dir, operation: "mkdir", errno: EACCES) }
    }
    // One writer per directory: a second process (or a second open) appending would interleave frames.
    let lockPath = dir + "/" + LogFiles.lock
    let lockFD = Glibc.open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
    guard lockFD >= 0 else { throw AuditError.io(path: lockPath, operation: "open", errno: errno) }
    guard flock(lockFD, LOCK_EX | LOCK_NB) == 0 else {
      Glibc.close(lockFD)
      throw AuditError.inUse(dir)
    }
    do {
      let rolledBack = try end.map { try rollBack(dir: dir, to: $0) } ?? 0
      return try openLocked(configuration: configuration, key: key, lockFD: lockFD, rolledBack: rolledBack)
    } catch {
      Glibc.close(lockFD)
      throw error
    }
  }

  /// Cuts the files back to `end` (a failed writer's last fsync): later segments go, the segment and the
  /// checkpoints file are truncated to their synced lengths. Returns the bytes dropped.
  private static func rollBack(dir: String, to end: AuditDurableEnd) throws -> UInt64 {
    var dropped: UInt64 = 0
    let segments = try LogFiles.segments(in: dir)
    guard let current = segments.first(where: { $0.name == end.segment }) else { return 0 }
    for seg in segments where seg.firstIndex > current.firstIndex {
      let path = dir + "/" + seg.name
      dropped += (try? POSIXFile.size(path)) ?? 0
      guard unlink(path) == 0 else { throw AuditError.io(path: path, operation: "unlink", errno: errno) }
    }
    for (name, length) in [(end.segment, end.segmentBytes), (LogFiles.checkpoints, end.checkpointBytes)] {
      let path = dir + "/" + name
      let size = try POSIXFile.size(path)
      if size > length {
        try truncate(path, to: length)
        dropped += size - length
      }
    }
    try POSIXFile.syncDirectory(dir)
    return dropped
  }

  private static func openLocked(
    configuration: AuditConfiguration, key: AuditSigningKey, lockFD: Int32, rolledBack: UInt64
  )
    throws -> AuditLog
  {
    let dir = configuration.directory
    var recovery = AuditRecovery(recordCount: 0, truncatedBytes: 0, truncatedSegment: nil, truncatedCheckpointBytes: 0)
    recovery.rolledBackBytes = rolledBack

    // Checkpoints first, so that the records can be checked against the latest while they are hashed.
    let cpPath = dir + "/" + LogFiles.checkpoints
    var checkpoints: [SignedCheckpoint] = []
    if FileManager.default.fileExists(atPath: cpPath) {
      let bytes = try POSIXFile.readAll(cpPath)
      if bytes.count < Frame.headerSize {
        try truncate(cpPath, to: 0)
        recovery.truncatedCheckpointBytes = UInt64(bytes.count)
      } else {
        guard Array(bytes.prefix(8)) == Frame.checkpointMagic else {
          throw AuditError.corrupt(
            segment: LogFiles.checkpoints, offset: 0, index: nil, reason: "not a checkpoints file")
        }
        let scan = Frame.scan(bytes, firstIndex: 0)
        if let p = scan.problem {
          guard p.isTornTail else {
            throw AuditError.corrupt(
              segment: LogFiles.checkpoints, offset: p.offset, index: p.expectedIndex, reason: p.reason)
          }
          try truncate(cpPath, to: scan.validEnd)
          recovery.truncatedCheckpointBytes = UInt64(bytes.count) - scan.validEnd
        }
        if let last = scan.frames.last {
          let note = String(decoding: last.payload, as: UTF8.self)
          do {
            checkpoints.append(
              try SignedCheckpoint.verify(note: note, key: key.verifyingKey, expectedOrigin: configuration.origin))
          } catch {
            throw AuditError.corrupt(
              segment: LogFiles.checkpoints, offset: last.offset, index: last.index, reason: "\(error)")
          }
        }
      }
    }
    let checkpointCount = try checkpointFrameCount(cpPath)

    // Segments: every one complete except possibly a torn tail on the last.
    var tree = CompactRange()
    var segments = try LogFiles.segments(in: dir)
    var lastSegmentBytes: UInt64 = 0
    for (i, seg) in segments.enumerated() {
      let path = dir + "/" + seg.name
      let isLast = i == segments.count - 1
      let bytes = try POSIXFile.readAll(path)
      if bytes.count < Frame.headerSize {
        guard isLast,
          bytes.allSatisfy({ $0 == 0 })
            || Frame.fileHeader(magic: Frame.segmentMagic, firstIndex: seg.firstIndex).starts(with: bytes)
        else {
          throw AuditError.corrupt(segment: seg.name, offset: 0, index: nil, reason: "segment header is damaged")
        }
        // Created but its header never reached the disk: write it again.
        try rewriteHeader(path, firstIndex: seg.firstIndex)
        recovery.truncatedBytes = UInt64(bytes.count)
        recovery.truncatedSegment = seg.name
        lastSegmentBytes = UInt64(Frame.headerSize)
        continue
      }
      guard
        Array(bytes.prefix(Frame.headerSize)) == Frame.fileHeader(magic: Frame.segmentMagic, firstIndex: seg.firstIndex)
      else {
        throw AuditError.corrupt(
          segment: seg.name, offset: 0, index: seg.firstIndex, reason: "segment header does not match its name")
      }
      guard seg.firstIndex == tree.size else {
        throw AuditError.corrupt(
          segment: seg.name, offset: 0, index: tree.size,
          reason: "segment starts at record \(seg.firstIndex) but the previous one ends at \(tree.size)")
      }
      let scan = Frame.scan(bytes, firstIndex: seg.firstIndex)
      for frame in scan.frames {
        tree.append(leafHash: Merkle.leafHash(frame.payload))
        if let cp = checkpoints.last, cp.treeSize == tree.size, cp.rootHash != tree.root {
          throw AuditError.corrupt(
            segment: seg.name, offset: frame.offset, index: frame.index,
            reason: "the records up to here do not match the latest signed checkpoint (size \(cp.treeSize))")
        }
      }
      if let p = scan.problem {
        guard isLast, p.isTornTail else {
          throw AuditError.corrupt(segment: seg.name, offset: p.offset, index: p.expectedIndex, reason: p.reason)
        }
        try truncate(path, to: scan.validEnd)
        recovery.truncatedBytes = UInt64(bytes.count) - scan.validEnd
        recovery.truncatedSegment = seg.name
      }
      lastSegmentBytes = scan.validEnd
    }
    recovery.recordCount = tree.size
    if let cp = checkpoints.last {
      guard cp.treeSize <= tree.size else {
        throw AuditError.corrupt(
          segment: LogFiles.checkpoints, offset: 0, index: nil,
          reason: "the latest checkpoint covers \(cp.treeSize) records but the log holds \(tree.size)")
      }
    }
    if let cp = checkpoints.last, cp.treeSize == 0, cp.rootHash != Merkle.emptyRoot {
      throw AuditError.corrupt(
        segment: LogFiles.checkpoints, offset: 0, index: nil, reason: "an empty checkpoint with a non-empty root")
    }

    if segments.isEmpty {
      try createSegment(dir: dir, firstIndex: 0)
      segments = [(LogFiles.segmentName(firstIndex: 0), 0)]
      lastSegmentBytes = UInt64(Frame.headerSize)
    }
    let segmentName = segments[segments.count - 1].name
    let segmentFD = try openForAppend(dir + "/" + segmentName)
    let cpFD: Int32
    let cpBytes: UInt64
    do { (cpFD, cpBytes) = try openCheckpoints(cpPath, dir: dir) } catch {
      Glibc.close(segmentFD)
      throw error
    }
    let state = WriterState(
      configuration: configuration, key: key, tree: tree, segmentFD: segmentFD, segmentName: segmentName,
      segmentBytes: lastSegmentBytes, checkpointFD: cpFD, checkpointBytes: cpBytes, checkpointCount: checkpointCount,
      latestCheckpoint: checkpoints.last, lockFD: lockFD)
    state.start()
    return AuditLog(state: state, recovery: recovery, configuration: configuration, key: key.verifyingKey)
  }

  /// Appends a record and returns its index (its leaf number in the tree). In `sync` mode it returns once an
  /// fsync covers the record; in `batched` mode once the record is queued for the writer.
  public func append(_ record: AuditRecord) async throws -> UInt64 {
    let payload = record.canonicalJSON()
    let leaf = Merkle.leafHash(payload)
    return try await state.append(payload: payload, leafHash: leaf)
  }

  /// Appends a record and returns once an fsync covers it, in either durability mode (a probe that the disk
  /// takes writes again, after a failure).
  public func appendDurable(_ record: AuditRecord) async throws -> UInt64 {
    let payload = record.canonicalJSON()
    return try await state.append(payload: payload, leafHash: Merkle.leafHash(payload), durable: true)
  }

  /// What was last fsynced: the end a reopen after a failure rolls back to.
  public var durableEnd: AuditDurableEnd { state.withLock { $0.durable } }

  /// The write or fsync error that stopped the writer, if one did.
  public var failure: AuditError? { state.withLock { $0.failure } }

  /// Whether the writer stopped on an error (one atomic load: cheap enough to ask on every call).
  public var hasFailed: Bool { state.failedFlag.load(ordering: .acquiring) }

  /// The newest signed checkpoint (covering only fsynced records), or nil before the first.
  public func latestCheckpoint() -> SignedCheckpoint? { state.withLock { $0.latestCheckpoint } }

  /// Records accepted so far (acknowledged or queued).
  public var count: UInt64 { state.withLock { $0.nextIndex } }

  /// Flushes and fsyncs everything queued, writes a final checkpoint if the tree grew, and stops the writer.
  /// Appends after `close` throw `AuditError.closed`.
  public func close() async { await state.close() }

  // MARK: files

  private static func truncate(_ path: String, to size: UInt64) throws {
    let fd = Glibc.open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw AuditError.io(path: path, operation: "open", errno: errno) }
    defer { Glibc.close(fd) }
    guard ftruncate(fd, off_t(size)) == 0 else { throw AuditError.io(path: path, operation: "truncate", errno: errno) }
    try POSIXFile.sync(fd, path: path)
  }

  private static func rewriteHeader(_ path: String, firstIndex: UInt64) throws {
    let fd = Glibc.open(path, O_WRONLY | O_TRUNC | O_CLOEXEC)
    guard fd >= 0 else { throw AuditError.io(path: path, operation: "open", errno: errno) }
    defer { Glibc.close(fd) }
    try POSIXFile.writeAll(fd, Frame.fileHeader(magic: Frame.segmentMagic, firstIndex: firstIndex), path: path)
    try POSIXFile.sync(fd, path: path)
  }

  static func createSegment(dir: String, firstIndex: UInt64) throws {
    let path = dir + "/" + LogFiles.segmentName(firstIndex: firstIndex)
    let fd = Glibc.open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw AuditError.io(path: path, operation: "create", errno: errno) }
    defer { Glibc.close(fd) }
    try POSIXFile.writeAll(fd, Frame.fileHeader(magic: Frame.segmentMagic, firstIndex: firstIndex), path: path)
    try POSIXFile.sync(fd, path: path)
    try POSIXFile.syncDirectory(dir)
  }

  static func openForAppend(_ path: String) throws -> Int32 {
    let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CLOEXEC)
    guard fd >= 0 else { throw AuditError.io(path: path, operation: "open", errno: errno) }
    return fd
  }

  private static func openCheckpoints(_ path: String, dir: String) throws -> (Int32, UInt64) {
    let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw AuditError.io(path: path, operation: "open", errno: errno) }
    var info = stat()
    guard fstat(fd, &info) == 0 else {
      Glibc.close(fd)
      throw AuditError.io(path: path, operation: "stat", errno: errno)
    }
    if info.st_size == 0 {
      do {
        try POSIXFile.writeAll(fd, Frame.fileHeader(magic: Frame.checkpointMagic, firstIndex: 0), path: path)
        try POSIXFile.sync(fd, path: path)
        try POSIXFile.syncDirectory(dir)
      } catch {
        Glibc.close(fd)
        throw error
      }
      return (fd, UInt64(Frame.headerSize))
    }
    return (fd, UInt64(info.st_size))
  }

  private static func checkpointFrameCount(_ path: String) throws -> UInt64 {
    guard FileManager.default.fileExists(atPath: path) else { return 0 }
    let bytes = try POSIXFile.readAll(path)
    guard bytes.count >= Frame.headerSize else { return 0 }
    return UInt64(Frame.scan(bytes, firstIndex: 0).frames.count)
  }
}

/// The writer's state, guarded by `condition`; the writer thread owns the file descriptors.
final class WriterState: @unchecked Sendable {
  struct Locked {
    var nextIndex: UInt64
    var pending: [(payload: [UInt8], leafHash: [UInt8])] = []
    var waiters: [CheckedContinuation<Void, any Error>] = []
    var closing = false
    var closed = false
    var failure: AuditError?
    var latestCheckpoint: SignedCheckpoint?
    /// The queued records include one whose append waits for an fsync (``AuditLog/appendDurable(_:)``).
    var syncRequested = false
    var durable: AuditDurableEnd
    var closeWaiters: [CheckedContinuation<Void, Never>] = []
    /// The writer is waiting for work with nothing queued: the next append must wake it (batched mode; in sync
    /// mode every append wakes it).
    var writerIdle = false
  }

  private let condition = NSCondition()
  private var locked: Locked
  /// Set with `locked.failure`, readable without the lock.
  let failedFlag = Atomic<Bool>(false)
  private let configuration: AuditConfiguration
  private let key: AuditSigningKey
  // Writer-thread only.
  private var tree: CompactRange
  private var segmentFD: Int32
  private var segmentName: String
  private var segmentBytes: UInt64
  private var syncedSegmentBytes: UInt64
  private let checkpointFD: Int32
  private var checkpointBytes: UInt64
  private let lockFD: Int32
  private var checkpointCount: UInt64
  private var syncedSize: UInt64
  private var unsynced = 0
  private var lastSync = ContinuousClock.now
  private var checkpointSize: UInt64
  private var lastCheckpoint = ContinuousClock.now

  init(
    configuration: AuditConfiguration, key: AuditSigningKey, tree: CompactRange, segmentFD: Int32, segmentName: String,
    segmentBytes: UInt64, checkpointFD: Int32, checkpointBytes: UInt64, checkpointCount: UInt64,
    latestCheckpoint: SignedCheckpoint?,
    lockFD: Int32
  ) {
    self.lockFD = lockFD
    self.configuration = configuration
    self.key = key
    self.tree = tree
    self.segmentFD = segmentFD
    self.segmentName = segmentName
    self.segmentBytes = segmentBytes
    self.syncedSegmentBytes = segmentBytes
    self.checkpointFD = checkpointFD
    self.checkpointBytes = checkpointBytes
    self.checkpointCount = checkpointCount
    self.syncedSize = tree.size
    self.checkpointSize = latestCheckpoint?.treeSize ?? 0
    self.locked = Locked(
      nextIndex: tree.size, latestCheckpoint: latestCheckpoint,
      durable: AuditDurableEnd(
        records: tree.size, segment: segmentName, segmentBytes: segmentBytes, checkpointBytes: checkpointBytes))
  }

  func withLock<T>(_ body: (inout Locked) -> T) -> T {
    condition.lock()
    defer { condition.unlock() }
    return body(&locked)
  }

  func start() {
    let thread = Thread { [self] in
      // Named from the thread itself: on Linux a name set before `start()` never reached the kernel, and the writer
      // showed up in `top -H` and `perf` under its creator's name (an event loop's). The kernel keeps 15 bytes.
      Thread.current.name = "palisade-audit"
      self.run()
    }
    thread.start()
  }

  func append(payload: [UInt8], leafHash: [UInt8], durable: Bool = false) async throws -> UInt64 {
    let sync = configuration.durability == .sync || durable
    // Fast path for batched mode with room in the queue: no suspension at all.
    if !sync, let index = try enqueueWithoutWaiting(payload: payload, leafHash: leafHash) { return index }
    var index: UInt64 = 0
    try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
      condition.lock()
      defer { condition.unlock() }
      if let failure = locked.failure { return continuation.resume(throwing: failure) }
      if locked.closing { return continuation.resume(throwing: AuditError.closed) }
      index = locked.nextIndex
      locked.nextIndex += 1
      locked.pending.append((payload, leafHash))
      locked.waiters.append(continuation)
      if durable { locked.syncRequested = true }
      locked.writerIdle = false
      condition.signal()
    }
    return index
  }

  /// Batched mode: queues the record and returns its index, or nil when the queue is full (the caller waits).
  private func enqueueWithoutWaiting(payload: [UInt8], leafHash: [UInt8]) throws -> UInt64? {
    condition.lock()
    defer { condition.unlock() }
    if let failure = locked.failure { throw failure }
    if locked.closing { throw AuditError.closed }
    guard locked.pending.count < configuration.maxQueuedRecords else { return nil }
    let index = locked.nextIndex
    locked.nextIndex += 1
    locked.pending.append((payload, leafHash))
    // Only the first record after an idle spell, or a long queue, wakes the writer; it gathers the rest for
    // `writeDelay` (a futex wake and two context switches per record were most of a batched append's cost).
    if locked.writerIdle || locked.pending.count >= configuration.writeBatchRecords {
      locked.writerIdle = false
      condition.signal()
    }
    return index
  }

  func close() async {
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
      condition.lock()
      defer { condition.unlock() }
      if locked.closed { return continuation.resume() }
      locked.closing = true
      locked.closeWaiters.append(continuation)
      condition.signal()
    }
  }

  // MARK: writer thread

  private func run() {
    let batched = configuration.durability == .batched
    while true {
      condition.lock()
      while locked.pending.isEmpty && !locked.closing && locked.failure == nil {
        // Sleep until there is work, or until an fsync or checkpoint falls due.
        var deadline: ContinuousClock.Instant?
        if batched && unsynced > 0 { deadline = lastSync + configuration.batchInterval }
        if syncedSize > checkpointSize {
          let due = lastCheckpoint + configuration.checkpointInterval
          deadline = deadline.map { min($0, due) } ?? due
        }
        locked.writerIdle = true
        guard let deadline else {
          condition.wait()
          locked.writerIdle = false
          continue
        }
        let now = ContinuousClock.now
        if now >= deadline {
          locked.writerIdle = false
          break
        }
        _ = condition.wait(until: Date(timeIntervalSinceNow: Self.seconds(now.duration(to: deadline))))
        locked.writerIdle = false
      }
      if batched && !locked.pending.isEmpty && configuration.writeDelay > .zero {
        // Let records gather (appends do not signal now) until the delay ends or the queue is long.
        let end = ContinuousClock.now + configuration.writeDelay
        while !locked.closing && locked.failure == nil && locked.pending.count < configuration.writeBatchRecords {
          let now = ContinuousClock.now
          if now >= end { break }
          _ = condition.wait(until: Date(timeIntervalSinceNow: Self.seconds(now.duration(to: end))))
        }
      }
      let batch = locked.pending
      locked.pending = []
      let waiters = locked.waiters
      locked.waiters = []
      let closing = locked.closing
      let failed = locked.failure != nil
      let syncRequested = locked.syncRequested
      locked.syncRequested = false
      condition.unlock()

      if failed {
        finish(waiters: waiters, error: .closed)
        return
      }
      do {
        if !batch.isEmpty { try write(batch) }
        let now = ContinuousClock.now
        if unsynced > 0
          && (!batched || closing || syncRequested || unsynced >= configuration.batchMaxRecords
            || now >= lastSync + configuration.batchInterval)
        {
          try POSIXFile.sync(segmentFD, path: segmentPath)
          syncedSize = tree.size
          syncedSegmentBytes = segmentBytes
          unsynced = 0
          lastSync = now
          markDurable()
        }
        for w in waiters { w.resume() }
        if syncedSize > checkpointSize
          && (closing || syncedSize - checkpointSize >= UInt64(configuration.checkpointEveryRecords)
            || now >= lastCheckpoint + configuration.checkpointInterval)
        {
          try writeCheckpoint()
        }
      } catch {
        let failure = (error as? AuditError) ?? .failed("\(error)")
        condition.lock()
        locked.failure = .failed("\(failure)")
        condition.unlock()
        failedFlag.store(true, ordering: .releasing)
        finish(waiters: waiters, error: .failed("\(failure)"))
        return
      }
      if closing {
        condition.lock()
        let empty = locked.pending.isEmpty
        condition.unlock()
        if empty {
          finish(waiters: [], error: .closed)
          return
        }
      }
    }
  }

  private static func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
  }

  private var segmentPath: String { configuration.directory + "/" + segmentName }

  /// Writes the batch's frames, rotating segments by size (an old segment is fsynced before it is closed).
  private func write(_ batch: [(payload: [UInt8], leafHash: [UInt8])]) throws {
    var buffer: [UInt8] = []
    buffer.reserveCapacity(batch.reduce(0) { $0 + $1.payload.count + Frame.overhead })
    for record in batch {
      let frameSize = UInt64(record.payload.count + Frame.overhead)
      if segmentBytes > UInt64(Frame.headerSize) && segmentBytes + frameSize > configuration.segmentMaxBytes {
        try POSIXFile.writeAll(segmentFD, buffer, path: segmentPath)
        buffer.removeAll(keepingCapacity: true)
        try POSIXFile.sync(segmentFD, path: segmentPath)
        syncedSize = tree.size
        syncedSegmentBytes = segmentBytes
        unsynced = 0
        markDurable()
        Glibc.close(segmentFD)
        try AuditLog.createSegment(dir: configuration.directory, firstIndex: tree.size)
        segmentName = LogFiles.segmentName(firstIndex: tree.size)
        segmentFD = try AuditLog.openForAppend(segmentPath)
        segmentBytes = UInt64(Frame.headerSize)
        syncedSegmentBytes = segmentBytes
        markDurable()
      }
      Frame.encode(index: tree.size, payload: record.payload, into: &buffer)
      tree.append(leafHash: record.leafHash)
      segmentBytes += frameSize
      unsynced += 1
    }
    try POSIXFile.writeAll(segmentFD, buffer, path: segmentPath)
  }

  private func writeCheckpoint() throws {
    let root: [UInt8]
    if syncedSize == tree.size { root = tree.root } else { return }
    let checkpoint = try SignedCheckpoint.sign(
      origin: configuration.origin, treeSize: syncedSize, rootHash: root, key: key)
    var frame: [UInt8] = []
    Frame.encode(index: checkpointCount, payload: Array(checkpoint.note.utf8), into: &frame)
    let path = configuration.directory + "/" + LogFiles.checkpoints
    try POSIXFile.writeAll(checkpointFD, frame, path: path)
    try POSIXFile.sync(checkpointFD, path: path)
    checkpointCount += 1
    checkpointBytes += UInt64(frame.count)
    checkpointSize = syncedSize
    lastCheckpoint = ContinuousClock.now
    condition.lock()
    locked.latestCheckpoint = checkpoint
    condition.unlock()
    markDurable()
  }

  /// Publishes what is now fsynced (writer thread).
  private func markDurable() {
    let end = AuditDurableEnd(
      records: syncedSize, segment: segmentName, segmentBytes: syncedSegmentBytes, checkpointBytes: checkpointBytes)
    condition.lock()
    locked.durable = end
    condition.unlock()
  }

  private func finish(waiters: [CheckedContinuation<Void, any Error>], error: AuditError) {
    condition.lock()
    let rest = locked.waiters
    locked.waiters = []
    locked.pending = []
    locked.closed = true
    locked.closing = true
    let closers = locked.closeWaiters
    locked.closeWaiters = []
    condition.unlock()
    for w in waiters + rest { w.resume(throwing: error) }
    Glibc.close(segmentFD)
    Glibc.close(checkpointFD)
    Glibc.close(lockFD)
    for c in closers { c.resume() }
  }
}
