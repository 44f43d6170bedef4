import Foundation

/// Reads a log directory and checks everything an auditor can check: every frame (magic, length, CRC, index
/// sequence, segment contiguity), every record (canonical JSON of an `AuditRecord`), every checkpoint (signature
/// by the audit key, origin, tree size within the log, root equal to the tree recomputed from the records), and
/// consistency of each checkpoint with the next (an RFC 9162 consistency proof built from the records and
/// verified). It never modifies the directory.
public enum AuditVerifier {
  /// The first thing found wrong.
  public struct Failure: Error, CustomStringConvertible, Sendable {
    /// The first bad record (or, for a checkpoint, the first record it does not vouch for).
    public var index: UInt64?
    /// The file and offset of the damage.
    public var file: String?
    public var offset: UInt64?
    public var reason: String

    public var description: String {
      var where_: [String] = []
      if let index { where_.append("record \(index)") }
      if let file { where_.append(file) }
      if let offset { where_.append("offset \(offset)") }
      return (where_.isEmpty ? "" : where_.joined(separator: ", ") + ": ") + reason
    }
  }

  /// A log that verified: its tree (for proofs), its checkpoints and where each record is.
  public struct VerifiedLog: Sendable {
    public var tree: MerkleTreeStore
    public var checkpoints: [SignedCheckpoint]
    public var segmentCount: Int
    /// The canonical JSON of each record.
    public var records: [[UInt8]]
    public var recordCount: UInt64 { tree.size }
    /// Records after the latest checkpoint (not yet vouched for by a signature).
    public var uncheckpointed: UInt64 { tree.size - (checkpoints.last?.treeSize ?? 0) }
  }

  /// Verifies the log in `directory` against `key`. The checkpoint origin must be `origin` (default: the key
  /// name).
  public static func verify(directory: String, key: AuditVerifyingKey, origin: String? = nil) throws(Failure)
    -> VerifiedLog
  {
    var isDir: ObjCBool = false
    guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
      throw Failure(file: directory, reason: "not a directory")
    }
    let segments: [(name: String, firstIndex: UInt64)]
    do { segments = try LogFiles.segments(in: directory) } catch { throw Failure(file: directory, reason: "\(error)") }
    return try verify(segments: segments, key: key, origin: origin) { name throws(Failure) in
      let path = directory + "/" + name
      if name == LogFiles.checkpoints, !FileManager.default.fileExists(atPath: path) { return nil }
      do { return try POSIXFile.readAll(path) } catch { throw Failure(file: name, reason: "\(error)") }
    }
  }

  /// The checks of ``verify(directory:key:origin:)`` on the files' bytes, with no file system access of its own
  /// (the fuzz target hands it bytes): `segments` are the segment files in order, as named on disk with the first
  /// index their name carries; `read` returns a file's bytes, one segment at a time, or nil for a file that does
  /// not exist (the checkpoints file may be absent; a segment may not).
  package static func verify(
    segments: [(name: String, firstIndex: UInt64)], key: AuditVerifyingKey, origin: String? = nil,
    read: (String) throws(Failure) -> [UInt8]?
  ) throws(Failure) -> VerifiedLog {
    var tree = MerkleTreeStore()
    var records: [[UInt8]] = []
    var locations: [(segment: Int, offset: UInt64)] = []
    for (i, seg) in segments.enumerated() {
      guard let bytes = try read(seg.name) else { throw Failure(file: seg.name, reason: "the segment is missing") }
      guard bytes.count >= Frame.headerSize,
        Array(bytes.prefix(Frame.headerSize)) == Frame.fileHeader(magic: Frame.segmentMagic, firstIndex: seg.firstIndex)
      else {
        throw Failure(
          index: seg.firstIndex, file: seg.name, offset: 0,
          reason: "segment header is missing, damaged or does not match its name")
      }
      guard seg.firstIndex == tree.size else {
        throw Failure(
          index: tree.size, file: seg.name, offset: 0,
          reason:
            "segment starts at record \(seg.firstIndex) but the previous segment ends at \(tree.size) (a segment is missing or extra)"
        )
      }
      let scan = Frame.scan(bytes, firstIndex: seg.firstIndex)
      for frame in scan.frames {
        do { _ = try AuditRecord.decodeCanonical(frame.payload) } catch {
          throw Failure(index: frame.index, file: seg.name, offset: frame.offset, reason: "\(error)")
        }
        tree.append(leafHash: Merkle.leafHash(frame.payload))
        records.append(frame.payload)
        locations.append((i, frame.offset))
      }
      if let p = scan.problem {
        let torn =
          p.isTornTail && i == segments.count - 1
          ? " (a torn tail from an interrupted append; opening the log cuts it back)" : ""
        throw Failure(index: p.expectedIndex, file: seg.name, offset: p.offset, reason: p.reason + torn)
      }
    }

    var checkpoints: [SignedCheckpoint] = []
    if let bytes = try read(LogFiles.checkpoints) {
      if !bytes.isEmpty {
        guard bytes.count >= Frame.headerSize, Array(bytes.prefix(8)) == Frame.checkpointMagic else {
          throw Failure(file: LogFiles.checkpoints, offset: 0, reason: "checkpoints file header is missing or damaged")
        }
        let scan = Frame.scan(bytes, firstIndex: 0)
        if let p = scan.problem {
          throw Failure(
            file: LogFiles.checkpoints, offset: p.offset, reason: "checkpoint \(p.expectedIndex): \(p.reason)")
        }
        var previous: SignedCheckpoint?
        for frame in scan.frames {
          let fail = { (reason: String, index: UInt64?) in
            Failure(
              index: index, file: LogFiles.checkpoints, offset: frame.offset,
              reason: "checkpoint \(frame.index): \(reason)")
          }
          let cp: SignedCheckpoint
          do {
            cp = try SignedCheckpoint.verify(
              note: String(decoding: frame.payload, as: UTF8.self), key: key, expectedOrigin: origin ?? key.name)
          } catch { throw fail("\(error)", nil) }
          guard cp.treeSize <= tree.size else {
            throw fail(
              "covers \(cp.treeSize) records but the log holds only \(tree.size) (records were removed)", tree.size)
          }
          if let previous {
            guard cp.treeSize >= previous.treeSize else {
              throw fail("tree size \(cp.treeSize) is smaller than the previous checkpoint's \(previous.treeSize)", nil)
            }
          }
          guard let root = tree.root(treeSize: cp.treeSize), root == cp.rootHash else {
            // Earlier checkpoints matched, so the altered record lies after the previous checkpoint.
            let from = previous?.treeSize ?? 0
            let loc = from < UInt64(locations.count) ? locations[Int(from)] : nil
            throw Failure(
              index: from, file: loc.map { segments[$0.segment].name } ?? LogFiles.checkpoints, offset: loc?.offset,
              reason:
                "records \(from)..<\(cp.treeSize) do not hash to the root signed in checkpoint \(frame.index) (a record was altered, removed, inserted or reordered)"
            )
          }
          if let previous, previous.treeSize > 0 {
            guard let proof = tree.consistencyProof(first: previous.treeSize, second: cp.treeSize),
              Merkle.verifyConsistency(
                firstSize: previous.treeSize, firstRoot: previous.rootHash, secondSize: cp.treeSize,
                secondRoot: cp.rootHash,
                proof: proof)
            else { throw fail("not consistent with the previous checkpoint", previous.treeSize) }
          }
          checkpoints.append(cp)
          previous = cp
        }
      }
    }
    return VerifiedLog(tree: tree, checkpoints: checkpoints, segmentCount: segments.count, records: records)
  }
}

extension AuditVerifier.VerifiedLog {
  /// An inclusion proof for record `index` against the checkpoint of `treeSize` (default: the latest).
  public func inclusionProof(index: UInt64, checkpointSize: UInt64? = nil) throws -> InclusionProofDocument {
    let chosen: SignedCheckpoint?
    if let s = checkpointSize { chosen = checkpoints.last { $0.treeSize == s } } else { chosen = checkpoints.last }
    guard let checkpoint = chosen else {
      throw AuditError.proof(
        checkpointSize.map { "no checkpoint has tree size \($0)" } ?? "the log has no checkpoint yet")
    }
    guard index < checkpoint.treeSize, let path = tree.inclusionProof(index: index, treeSize: checkpoint.treeSize)
    else {
      throw AuditError.proof("record \(index) is not covered by the checkpoint of size \(checkpoint.treeSize)")
    }
    return InclusionProofDocument(
      leafIndex: index, treeSize: checkpoint.treeSize, record: String(decoding: records[Int(index)], as: UTF8.self),
      leafHash: tree.leafHash(index), auditPath: path, rootHash: checkpoint.rootHash, checkpoint: checkpoint.note)
  }

  /// A consistency proof between the trees of `from` and `to` records (`to` default: the latest checkpoint).
  public func consistencyProof(from: UInt64, to: UInt64?) throws -> ConsistencyProofDocument {
    let second = to ?? checkpoints.last?.treeSize ?? tree.size
    guard from <= second, second <= tree.size, let firstRoot = tree.root(treeSize: from),
      let secondRoot = tree.root(treeSize: second)
    else {
      throw AuditError.proof("need 0 <= from <= to <= \(tree.size) (from \(from), to \(second))")
    }
    let proof = from == 0 || from == second ? [] : (tree.consistencyProof(first: from, second: second) ?? [])
    return ConsistencyProofDocument(
      firstSize: from, secondSize: second, firstRoot: firstRoot, secondRoot: secondRoot, proof: proof,
      firstCheckpoint: checkpoints.last { $0.treeSize == from }?.note,
      secondCheckpoint: checkpoints.last { $0.treeSize == second }?.note)
  }
}

private func hex(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// An inclusion proof as `palisade audit prove` prints it (hashes in lowercase hex).
public struct InclusionProofDocument: Sendable {
  public var leafIndex: UInt64
  public var treeSize: UInt64
  /// The record's canonical JSON (the leaf data).
  public var record: String
  public var leafHash: [UInt8]
  public var auditPath: [[UInt8]]
  public var rootHash: [UInt8]
  /// The signed checkpoint note the root comes from.
  public var checkpoint: String

  public var json: [String: Any] {
    [
      "leaf_index": leafIndex, "tree_size": treeSize, "record": record, "leaf_hash": hex(leafHash),
      "audit_path": auditPath.map(hex), "root_hash": hex(rootHash), "checkpoint": checkpoint,
    ]
  }
}

/// A consistency proof as `palisade audit consistency` prints it.
public struct ConsistencyProofDocument: Sendable {
  public var firstSize: UInt64
  public var secondSize: UInt64
  public var firstRoot: [UInt8]
  public var secondRoot: [UInt8]
  public var proof: [[UInt8]]
  public var firstCheckpoint: String?
  public var secondCheckpoint: String?

  public var json: [String: Any] {
    var out: [String: Any] = [
      "first_size": firstSize, "second_size": secondSize, "first_root": hex(firstRoot), "second_root": hex(secondRoot),
      "proof": proof.map(hex),
    ]
    if let firstCheckpoint { out["first_checkpoint"] = firstCheckpoint }
    if let secondCheckpoint { out["second_checkpoint"] = secondCheckpoint }
    return out
  }
}
