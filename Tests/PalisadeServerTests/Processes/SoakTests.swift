import Foundation
import Testing

/// The 60-second version of `Benchmarks/soak.sh` (the full one runs for 10 minutes, outside `make test`): the real
/// server binary under steady load from three grpcio callers while model versions are hot-swapped every 8 s, the
/// server certificate and the JWKS rotate every 15 s and the policy reloads every 20 s. The script itself checks
/// what the soak is for and exits non-zero otherwise: no failed call, open fds stable, and every unloaded version
/// gone from memory (`palisade_models_in_memory` back to 1 and one scheduler queue and screener state left, read
/// from the admin endpoint once the load stopped). Load is half the measured capacity here (80% in the full run),
/// so that a loaded CI machine does not turn it into a shedding test.
@Suite struct SoakTests {
  @Test func sixtySecondSoakLosesNoCallAndReleasesUnloadedVersions() async throws {
    let python = InteropTests.python
    #expect(FileManager.default.isExecutableFile(atPath: python), "run `make venv` first (\(python))")
    let work = FileManager.default.temporaryDirectory.appendingPathComponent("palisade-soak-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
    defer {
      try? FileManager.default.removeItem(atPath: work)
      try? FileManager.default.removeItem(atPath: work + "-out")
    }
    // A PKI of its own (CI has no certs/out): the dev PKI script into the work directory.
    let pkiDir = "\(work)/pki"
    let pki = try await ProcessTests.run(
      "\(repositoryRoot)/certs/make-dev-pki.sh", [pkiDir, "2"], timeout: .seconds(60))
    #expect(pki.status == 0, "\(pki.stderr)")
    let soak = try await ProcessTests.run(
      "/usr/bin/env",
      [
        "PALISADE_BIN=\(ProcessTests.binary)", "PALISADE_PYTHON=\(python)", "PALISADE_PKI=\(pkiDir)",
        "SOAK_WORK=\(work)",
        "\(repositoryRoot)/Benchmarks/soak.sh", "45", "--quick",
      ], timeout: .seconds(150))
    let summaryPath = "\(work)-out/soak.json"
    let summary = (try? Data(contentsOf: URL(fileURLWithPath: summaryPath)))
      .flatMap { try? JSONSerialization.jsonObject(with: $0) as? [String: Any] }
    #expect(soak.status == 0, "soak failed:\n\(soak.stdout)\n\(soak.stderr.suffix(3000))")
    #expect(summary?["failures"] as? Int == 0, "failed calls: \(summary?["error_samples"] ?? "no summary")")
    #expect((summary?["calls"] as? Int ?? 0) > 1000, "the callers called")
    let after = summary?["after_load"] as? [String: Any]
    #expect(
      after?["models_in_memory"] as? Double == 1, "unloaded versions still in memory: \(String(describing: after))")
    #expect((summary?["model_versions_loaded"] as? Int ?? 0) >= 4, "versions were swapped")
  }
}
