import Foundation
import GRPCCore
import PalisadeAudit
@testable import PalisadeServer
import PalisadeTestSupport
import Testing

/// Faults under the audit log (docs/reliability.md, "Faults"), on real mounts: a full tmpfs, and an ext4 file
/// system on a loop device whose backing file lives on a tmpfs that runs out of room (so `write` succeeds into the
/// page cache and the later writeback fails in the block layer: `fdatasync` reports the error, as it does for a
/// thin-provisioned volume out of space or a failing disk). Fail closed: no audit, no answer; service resumes on
/// its own once the disk takes writes again; the log verifies, also after a remount (what is on the disk).
///
/// Mounting needs root (this machine and CI run the tests as root); elsewhere the suite is skipped.
@Suite(.serialized, .enabled(if: getuid() == 0, "mounting a tmpfs and a loop device needs root"))
struct AuditFaultTests {
  @Test(arguments: ["sync", "batched"])
  func diskFullRefusesEveryCallAndServiceResumesWhenSpaceReturns(durability: String) async throws {
    let pki = try TestPKI()
    let mount = pki.path("full")
    try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
    try await Shell.run("mount -t tmpfs -o size=512k,mode=0700 palisade-test-audit \(mount)")
    defer { Shell.runDetached("umount -l \(mount)") }
    let (server, key, pubPath) = try await Self.server(pki, directory: "\(mount)/audit", durability: durability)

    let caller = try goodClient(server)
    var answeredOK = 0
    // Healthy: calls are answered.
    for _ in 0..<3 {
      _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
      answeredOK += 1
    }

    // Fill the file system. The segment's last page may still hold a few records; then a write fails.
    _ = try? await Shell.run("cat /dev/zero > \(mount)/ballast")
    let outcome = try await Self.callUntilRefused(server, caller)
    answeredOK += outcome.answered
    #expect(outcome.refused?.code == .unavailable, "\(String(describing: outcome.refused))")
    #expect(outcome.refused?.message.contains("audit log is unavailable") == true)
    // Every call now: refused at once, with UNAVAILABLE; readiness says so; the metrics count it.
    for _ in 0..<3 {
      let e = await rpcError {
        _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
      }
      #expect(e?.code == .unavailable)
    }
    let other = await rpcError { _ = try await withClient(server, caller) { try await $0.serverMetadata(.init()) } }
    #expect(other?.code == .unavailable, "authorised RPCs other than inference are refused too")
    #expect(try await adminGet(server, "/readyz").0 == 503)
    let metrics = Self.metricsText(server)
    #expect(metrics.contains("palisade_audit_available 0"), "\(metrics)")
    #expect(metrics.contains("palisade_audit_failures_total 1"))
    #expect(metrics.contains(#"palisade_rejections_total{reason="audit_unavailable"}"#))

    // Space returns: service resumes on its own (the log is reopened within about a second).
    try FileManager.default.removeItem(atPath: "\(mount)/ballast")
    answeredOK += try await Self.waitUntilServing(server, caller)
    #expect(try await adminGet(server, "/readyz").0 == 200)
    let after = Self.metricsText(server)
    #expect(
      after.contains("palisade_audit_available 1") && after.contains("palisade_audit_recoveries_total 1"), "\(after)")
    try await server.stop()

    // The log verifies with the CLI, and holds a record for every answer that was given (sync), or at most one
    // per answer (batched: answers do not wait for the disk, docs/audit.md's loss window).
    let verify = try await ProcessTests.run(
      ProcessTests.binary, ["audit", "verify", "\(mount)/audit", "--key", pubPath, "--origin", "palisade.test/audit"])
    #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    let records = try Self.records("\(mount)/audit", key)
    let okRecords = records.filter { $0.kind == .call && $0.rpc == "ModelInfer" && $0.status == "OK" }.count
    if durability == "sync" {
      #expect(okRecords == answeredOK, "every answered call has its record, and no refused call has one")
    } else {
      #expect(okRecords <= answeredOK && okRecords >= 3)
    }
    let reopened = try #require(records.last { $0.kind == .logOpened }, "the reopening is itself audited")
    #expect(
      reopened.reason?.contains("write or fsync failure") == true
        && reopened.details["failure"]?.contains("No space") == true)
  }

  @Test func fsyncErrorFromTheBlockLayerRefusesCallsAndTheLogVerifiesAfterARemount() async throws {
    let pki = try TestPKI()
    guard let disk = try await LoopDisk.make(pki.path("loop")) else { return }
    defer { disk.remove() }
    let (server, key, pubPath) = try await Self.server(pki, directory: "\(disk.mountPoint)/audit", durability: "sync")
    let caller = try goodClient(server)
    var answeredOK = 0
    for _ in 0..<3 {
      _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
      answeredOK += 1
    }
    // The backing store runs out: writes still land in the page cache, their writeback fails, fdatasync says so.
    try await disk.exhaustBackingStore()
    let outcome = try await Self.callUntilRefused(server, caller)
    answeredOK += outcome.answered
    #expect(outcome.refused?.code == .unavailable, "\(String(describing: outcome.refused))")
    let e = await rpcError {
      _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    #expect(e?.code == .unavailable)
    #expect(Self.metricsText(server).contains("palisade_audit_failures_total 1"))

    try await disk.restoreBackingStore()
    answeredOK += try await Self.waitUntilServing(server, caller)
    try await server.stop()

    // What the disk holds (not the page cache): remount, then verify.
    try await disk.remount()
    let verify = try await ProcessTests.run(
      ProcessTests.binary,
      ["audit", "verify", "\(disk.mountPoint)/audit", "--key", pubPath, "--origin", "palisade.test/audit"])
    #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
    let records = try Self.records("\(disk.mountPoint)/audit", key)
    let okRecords = records.filter { $0.kind == .call && $0.rpc == "ModelInfer" && $0.status == "OK" }.count
    #expect(
      okRecords == answeredOK, "records written after the last good fsync were rolled back; answered calls kept theirs")
    let reopened = try #require(records.last { $0.kind == .logOpened })
    #expect(reopened.details["failure"]?.contains("fsync") == true, "\(reopened)")
  }

  // MARK: helpers

  static func server(_ pki: TestPKI, directory: String, durability: String) async throws
    -> (TestServer, AuditSigningKey, String)
  {
    let key = try AuditSigningKey.generate(name: "palisade.test/audit")
    let keyPath = try pki.write("audit.key", key.privateKeyPEM, mode: 0o600)
    let pubPath = try pki.write("audit.pub.pem", key.verifyingKey.publicKeyPEM)
    let server = try await TestServer.start(pki: pki, models: [AddSubModel()]) {
      var audit = ServerConfig.Audit(directory: directory, key: keyPath)
      audit.durability = durability
      audit.batchIntervalMs = 20
      audit.checkpointEveryRecords = 4
      audit.origin = "palisade.test/audit"
      $0.audit = audit
    }
    return (server, key, pubPath)
  }

  /// Calls until one is refused (bounded): how many were answered before, and the refusal.
  static func callUntilRefused(_ server: TestServer, _ caller: TestClient) async throws -> (
    answered: Int, refused: RPCError?
  ) {
    var answered = 0
    for _ in 0..<200 {
      let e = await rpcError {
        _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
      }
      if let e { return (answered, e) }
      answered += 1
      try await Task.sleep(for: .milliseconds(10))
    }
    return (answered, nil)
  }

  /// Polls (bounded, generously: a loaded CI box) until calls are answered again; then makes two more. Returns
  /// the calls answered.
  static func waitUntilServing(_ server: TestServer, _ caller: TestClient) async throws -> Int {
    let deadline = ContinuousClock.now + .seconds(30)
    var answered = 0
    while ContinuousClock.now < deadline {
      let e = await rpcError {
        _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
      }
      if e == nil {
        answered = 1
        break
      }
      #expect(e?.code == .unavailable)
      try await Task.sleep(for: .milliseconds(200))
    }
    #expect(answered == 1, "service did not resume")
    for _ in 0..<2 {
      _ = try await withClient(server, caller) { try await $0.modelInfer(simpleRequest(raw: true)) }
      answered += 1
    }
    return answered
  }

  static func records(_ directory: String, _ key: AuditSigningKey) throws -> [AuditRecord] {
    let log = try AuditVerifier.verify(directory: directory, key: key.verifyingKey)
    return try log.records.map { try JSONDecoder().decode(AuditRecord.self, from: Data($0)) }
  }

  static func metricsText(_ server: TestServer) -> String {
    String(decoding: server.runtime.metrics.render(), as: UTF8.self)
  }
}

/// Shell commands for the fault tests (mount, losetup, mkfs).
enum Shell {
  struct Failed: Error, CustomStringConvertible {
    var description: String
  }

  @discardableResult
  static func run(_ command: String) async throws -> String {
    let r = try await ProcessTests.run("/bin/sh", ["-c", command], timeout: .seconds(60))
    guard r.status == 0 else { throw Failed(description: "`\(command)` exited \(r.status): \(r.stderr)") }
    return r.stdout
  }

  /// Cleanup from `defer` (which cannot await): runs and waits, ignoring the outcome.
  static func runDetached(_ command: String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    p.standardError = FileHandle.nullDevice
    p.standardOutput = FileHandle.nullDevice
    try? p.run()
    p.waitUntilExit()
  }
}

/// An ext4 file system on a loop device whose backing file is sparse, on a small tmpfs: "thin provisioning".
/// Filling the tmpfs makes every write to a not-yet-backed block fail below the file system.
struct LoopDisk {
  let root: String
  let device: String
  var mountPoint: String { root + "/mnt" }
  var backing: String { root + "/back" }

  /// Nil (and the test passes vacuously, saying why) when loop devices or mkfs.ext4 are not available.
  static func make(_ root: String) async throws -> LoopDisk? {
    let have = try? await Shell.run("command -v losetup && command -v mkfs.ext4 && test -e /dev/loop-control")
    guard have != nil else {
      print("AuditFaultTests: skipping the fsync fault: no losetup, mkfs.ext4 or /dev/loop-control here")
      return nil
    }
    try FileManager.default.createDirectory(atPath: root + "/back", withIntermediateDirectories: true)
    try FileManager.default.createDirectory(atPath: root + "/mnt", withIntermediateDirectories: true)
    try await Shell.run("mount -t tmpfs -o size=8m palisade-test-back \(root)/back")
    // Every metadata block written now (no lazy init, no discard), so only new data blocks need backing later.
    // No journal: mkfs leaves the journal area unbacked, and a failed journal commit turns ext4 read-only (then
    // the log stays failed, fail closed, until someone remounts); here the fault hits file data only.
    try await Shell.run(
      "truncate -s 64m \(root)/back/disk.img && mkfs.ext4 -q -F -O ^has_journal -E lazy_itable_init=0,nodiscard \(root)/back/disk.img"
    )
    let device: String
    do {
      device = try await Shell.run("losetup -f --show \(root)/back/disk.img").trimmingCharacters(
        in: .whitespacesAndNewlines)
    } catch {
      Shell.runDetached("umount -l \(root)/back")
      print("AuditFaultTests: skipping the fsync fault: no loop device (\(error))")
      return nil
    }
    let disk = LoopDisk(root: root, device: device)
    do { try await Shell.run("mount -o errors=continue \(device) \(root)/mnt") } catch {
      disk.remove()
      throw error
    }
    return disk
  }

  func exhaustBackingStore() async throws { _ = try? await Shell.run("cat /dev/zero > \(backing)/ballast") }
  func restoreBackingStore() async throws { try await Shell.run("rm -f \(backing)/ballast") }
  func remount() async throws { try await Shell.run("umount \(mountPoint) && mount \(device) \(mountPoint)") }

  func remove() {
    Shell.runDetached("umount \(mountPoint) || umount -l \(mountPoint); losetup -d \(device); umount -l \(backing)")
  }
}
