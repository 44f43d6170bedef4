import Foundation
import Logging
import PalisadeBundle
import PalisadeCore
import PalisadeTestSupport
import Testing

@testable import PalisadeServer

/// A server killed while it unpacked a bundle leaves its unpack directory behind; the next loader removes it, and
/// nothing else: not a live process's directory, not a symbolic link, not a file, not another name.
@Suite struct UnpackCleanupTests {
  @Test func staleUnpackDirectoriesOfProcessesThatAreGoneAreRemovedAtStart() throws {
    let pki = try TestPKI()
    let unpack = pki.path("unpack")
    let fm = FileManager.default
    try fm.createDirectory(atPath: unpack, withIntermediateDirectories: true)
    // A pid that no longer runs: a child that has exited and been reaped.
    let child = Process()
    child.executableURL = URL(fileURLWithPath: "/bin/true")
    try child.run()
    child.waitUntilExit()
    let dead = child.processIdentifier
    func stale(_ name: String) throws -> String {
      let dir = "\(unpack)/\(name)"
      try fm.createDirectory(atPath: "\(dir)/nested", withIntermediateDirectories: true)
      #expect(fm.createFile(atPath: "\(dir)/nested/model.onnx", contents: Data([1, 2, 3])))
      // As the unpacker leaves them: files read-only, directories 0700.
      try fm.setAttributes([.posixPermissions: 0o400], ofItemAtPath: "\(dir)/nested/model.onnx")
      try fm.setAttributes([.posixPermissions: 0o700], ofItemAtPath: dir)
      return dir
    }
    let killed = try stale("palisade-unpack-\(dead)-1f2e-digits-3-4C6E1D2A")
    // A container's server is pid 1 each time: this pid, another process's instance.
    let earlier = try stale("palisade-unpack-\(getpid())-0-digits-4-0F0E")
    // This process's own: another loader in it (tests run servers side by side) may be unpacking right now.
    let current = try stale("palisade-unpack-\(getpid())-\(BundleLoader.processInstance)-digits-4-1A1B")
    let alive = try stale("palisade-unpack-1-77-digits-5-AAAA")  // pid 1 runs
    let foreign = try stale("digits-6-BBBB")  // not our name
    let victim = try stale("victim")
    try fm.createSymbolicLink(atPath: "\(unpack)/palisade-unpack-\(dead)-link", withDestinationPath: victim)
    #expect(fm.createFile(atPath: "\(unpack)/palisade-unpack-\(dead)-file", contents: Data([0])))

    _ = try BundleLoader(
      settings: .init(
        directories: [pki.path("models")], trust: TrustPolicy(rules: []), stateFile: pki.path("state/accepted.json"),
        unpackDirectory: unpack),
      runtimes: [], repository: ModelRepository(), logger: Logger(label: "test"))

    #expect(!fm.fileExists(atPath: killed), "the dead process's directory is removed")
    #expect(!fm.fileExists(atPath: earlier), "an earlier process with this pid left it: removed")
    #expect(fm.fileExists(atPath: "\(current)/nested/model.onnx"), "this process's own unpack stays")
    #expect(fm.fileExists(atPath: "\(alive)/nested/model.onnx"), "a running process's directory stays")
    #expect(fm.fileExists(atPath: "\(foreign)/nested/model.onnx"))
    #expect(fm.fileExists(atPath: "\(victim)/nested/model.onnx"), "a symbolic link is not followed")
    #expect((try? fm.destinationOfSymbolicLink(atPath: "\(unpack)/palisade-unpack-\(dead)-link")) == victim)
    #expect(fm.fileExists(atPath: "\(unpack)/palisade-unpack-\(dead)-file"))
  }
}
