import Foundation
import PalisadeTestSupport
import Testing

/// `palisade policy` and `palisade token`, as operators run them.
@Suite struct CLITests {
  var bin: String { ProcessTests.binary }

  @Test func policyCheckAcceptsTheExampleAndNamesErrorLines() async throws {
    let ok = try await ProcessTests.run(bin, ["policy", "check", "\(repositoryRoot)/deploy/policy.example.yaml"])
    #expect(ok.status == 0, "\(ok.stderr)")
    #expect(ok.stdout.contains("policy OK"))
    let local = try await ProcessTests.run(bin, ["policy", "check", "\(repositoryRoot)/deploy/local/policy.yaml"])
    #expect(local.status == 0, "\(local.stderr)")
    let pki = try TestPKI()
    let bad = try pki.write(
      "bad.yaml",
      "version: 1\nrules:\n  - name: r\n    principals: [{spiffe: 'spiffe://td/x'}]\n    rpcs: [ModelInfr]\n")
    let r = try await ProcessTests.run(bin, ["policy", "check", bad])
    #expect(r.status == 1)
    #expect(r.stderr.contains("bad.yaml:5") && r.stderr.contains("ModelInfr"), "\(r.stderr)")
  }

  @Test func policyTestReportsEachCaseAndFailsOnMismatch() async throws {
    let pki = try TestPKI()
    let policy = "\(repositoryRoot)/deploy/policy.example.yaml"
    let good = try pki.write(
      "cases.yaml",
      """
      cases:
        - {principal: "spiffe://palisade.dev/ns/demo/sa/client-a", rpc: ModelInfer, model: digits, expect: allow, rule: demo-callers}
        - {principal: "spiffe://palisade.dev/ns/demo/sa/client-b", rpc: ModelInfer, model: digits, expect: deny, rule: client-b-no-infer}
        - {principal: "spiffe://palisade.dev/ns/demo/sa/client-a", rpc: RepositoryModelLoad, model: digits, expect: deny}
        - {principal: "spiffe://palisade.dev/ns/ops/sa/operator", rpc: RepositoryModelLoad, model: digits, expect: allow}
        - {principal: "spiffe://elsewhere/x", scopes: ["inference:demo"], rpc: ModelMetadata, model: demo/a/b, expect: allow}
      """)
    let r = try await ProcessTests.run(bin, ["policy", "test", policy, good])
    #expect(r.status == 0, "\(r.stdout)\(r.stderr)")
    #expect(r.stdout.contains("5 passed, 0 failed"))
    let wrong = try pki.write(
      "wrong.yaml",
      "cases:\n  - {principal: \"spiffe://palisade.dev/ns/demo/sa/client-b\", rpc: ModelInfer, model: digits, expect: allow}\n"
    )
    let w = try await ProcessTests.run(bin, ["policy", "test", policy, wrong])
    #expect(w.status == 1)
    #expect(w.stdout.contains("FAIL") && w.stdout.contains("0 passed, 1 failed"), "\(w.stdout)")
  }

  @Test func policyExplainNamesTheDecidingRule() async throws {
    let r = try await ProcessTests.run(
      bin,
      [
        "policy", "explain", "\(repositoryRoot)/deploy/policy.example.yaml", "--principal",
        "spiffe://palisade.dev/ns/demo/sa/client-b", "--rpc", "ModelInfer", "--model", "digits",
      ])
    #expect(r.status == 0)
    #expect(r.stdout.contains("DENY") && r.stdout.contains("client-b-no-infer"), "\(r.stdout)")
  }

  @Test func mintedTokensWorkAgainstAServerTrustingTheirJWKS() async throws {
    let pki = try TestPKI()
    let key = pki.path("issuer.key")
    let gen = try await ProcessTests.run(
      "/usr/bin/openssl", ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key])
    #expect(gen.status == 0)
    let jwks = try await ProcessTests.run(bin, ["token", "jwks", "--key", key, "--kid", "cli-1"])
    #expect(jwks.status == 0, "\(jwks.stderr)")
    let jwksPath = try pki.write("cli-jwks.json", jwks.stdout)
    let server = try await TestServer.start(pki: pki) {
      $0.auth.issuers = [.init(issuer: "https://cli.issuer", kind: .oauth, jwks: jwksPath)]
    }
    let client = try pki.client("cli", sans: [TestPKI.spiffe("spiffe://palisade.test/sa/cli")])
    let mint = try await ProcessTests.run(
      bin,
      [
        "token", "mint", "--key", key, "--kid", "cli-1", "--issuer", "https://cli.issuer", "--aud", TestPKI.audience,
        "--bind-cert", client.cert, "--scope", "a", "--scope", "b", "--ttl", "120",
      ])
    #expect(mint.status == 0, "\(mint.stderr)")
    let token = mint.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    let inspect = try await ProcessTests.run(bin, ["token", "inspect", token])
    #expect(
      inspect.stdout.contains("x5t#S256") && inspect.stdout.contains("spiffe:\\/\\/palisade.test\\/sa\\/cli"),
      "\(inspect.stdout)")
    #expect(inspect.stdout.contains("\"verified\" : false"))
    let call = try await ProcessTests.run(
      bin,
      [
        "call", "metadata", "--target", "127.0.0.1:\(server.port)", "--cert", client.cert, "--key", client.key, "--ca",
        pki.path("server-ca.pem"), "--token", token,
      ])
    #expect(call.status == 0, "\(call.stderr)")
    #expect(call.stdout.contains("palisade"))
    try await server.stop()
  }
}

/// `palisade bundle`, against the OpenSSF `model_signing` CLI.
@Suite struct BundleCLITests {
  var bin: String { ProcessTests.binary }
  var modelSigning: String {
    URL(fileURLWithPath: InteropTests.python).deletingLastPathComponent().appendingPathComponent("model_signing").path
  }

  @Test func initSignVerifyInspectPackAndModelSigningAgrees() async throws {
    let pki = try TestPKI()
    let key = pki.path("publisher.key")
    #expect(
      try await ProcessTests.run(
        "/usr/bin/openssl", ["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key]
      ).status == 0)
    let pubResult = try await ProcessTests.run("/usr/bin/openssl", ["ec", "-in", key, "-pubout"])
    let pub = try pki.write("publisher.pub.pem", pubResult.stdout)
    let model = try pki.write("model.testmodel", #"{"kind": "addsub"}"#)
    let dir = pki.path("bundle")
    let made = try await ProcessTests.run(
      bin,
      [
        "bundle", "init", "--model", model, "--name", "simple", "--version", "4", "--input", "INPUT0:INT32:1,16",
        "--input", "INPUT1:INT32:1,16", "--output", "OUTPUT0:INT32:1,16", "--output", "OUTPUT1:INT32:1,16", "--out",
        dir,
      ])
    #expect(made.status == 0, "\(made.stderr)")
    let signed = try await ProcessTests.run(bin, ["bundle", "sign", dir, "--key", key])
    #expect(signed.status == 0, "\(signed.stderr)")
    // The reference tool accepts our signature.
    let theirs = try await ProcessTests.run(
      modelSigning, ["verify", "key", dir, "--signature", "\(dir)/model.sig", "--public_key", pub],
      timeout: .seconds(120))
    #expect(theirs.status == 0, "\(theirs.stdout)\(theirs.stderr)")
    let ours = try await ProcessTests.run(bin, ["bundle", "verify", dir, "--name", "simple", "--public-key", pub])
    #expect(ours.status == 0, "\(ours.stderr)")
    #expect(ours.stdout.contains("simple v4"))
    let wrongName = try await ProcessTests.run(bin, ["bundle", "verify", dir, "--name", "other", "--public-key", pub])
    #expect(wrongName.status == 1)
    let inspect = try await ProcessTests.run(bin, ["bundle", "inspect", dir])
    #expect(inspect.stdout.contains("UNVERIFIED") && inspect.stdout.contains("manifest.json"))
    let packed = try await ProcessTests.run(bin, ["bundle", "pack", dir, "--out", pki.path("4.tar.zst")])
    #expect(packed.status == 0, "\(packed.stderr)")

    // Tampering after signing: both tools refuse.
    try Data(#"{"kind": "slow"}"#.utf8).write(to: URL(fileURLWithPath: "\(dir)/model.testmodel"))
    let tamperedOurs = try await ProcessTests.run(
      bin, ["bundle", "verify", dir, "--name", "simple", "--public-key", pub])
    #expect(tamperedOurs.status == 1)
    #expect(tamperedOurs.stderr.contains("model.testmodel"), "\(tamperedOurs.stderr)")
    let tamperedTheirs = try await ProcessTests.run(
      modelSigning, ["verify", "key", dir, "--signature", "\(dir)/model.sig", "--public_key", pub],
      timeout: .seconds(120))
    #expect(tamperedTheirs.status != 0)

    // A bundle signed by model_signing is accepted by ours.
    try Data(#"{"kind": "addsub"}"#.utf8).write(to: URL(fileURLWithPath: "\(dir)/model.testmodel"))
    let resigned = try await ProcessTests.run(
      modelSigning, ["sign", "key", dir, "--private_key", key, "--signature", "\(dir)/model.sig"],
      timeout: .seconds(120))
    #expect(resigned.status == 0, "\(resigned.stderr)")
    let accepted = try await ProcessTests.run(bin, ["bundle", "verify", dir, "--name", "simple", "--public-key", pub])
    #expect(accepted.status == 0, "\(accepted.stderr)")
  }
}

/// `palisade bundle stats` and `bundle init --stats` / output policy, as a publisher runs them.
@Suite struct BundleStatsCLITests {
  var bin: String { ProcessTests.binary }

  @Test func statsFromASampleGoIntoTheManifestAndBadSamplesAreRefused() async throws {
    let pki = try TestPKI()
    let fixtures = "\(repositoryRoot)/Tests/Fixtures"
    let stats = try await ProcessTests.run(bin, ["bundle", "stats", "\(fixtures)/digits_reference.npy"])
    #expect(stats.status == 0, "\(stats.stderr)")
    let json = try #require(try JSONSerialization.jsonObject(with: Data(stats.stdout.utf8)) as? [String: Any])
    #expect(json["rows"] as? Int == 1000)
    let reference = try #require(json["reference_statistics"] as? [String: Any])
    #expect(
      (reference["mean"] as? [Double])?.count == 64 && (reference["covariance_diagonal"] as? [Double])?.count == 64)
    let threshold = try #require((json["screening_policy"] as? [String: Any])?["ood_threshold"] as? Double)
    #expect(threshold > 5 && threshold < 200, "\(threshold)")

    let dir = pki.path("bundle")
    let made = try await ProcessTests.run(
      bin,
      [
        "bundle", "init", "--model", "\(fixtures)/mlp_digits.onnx", "--name", "digits", "--version", "1", "--out", dir,
        "--stats", "\(fixtures)/digits_stream.csv", "--ood-action", "reject", "--top-k", "2", "--round-decimals", "3",
        "--pad-to-bucket-bytes", "512", "--labels", "zero,one,two,three,four,five,six,seven,eight,nine",
      ])
    #expect(made.status == 0, "\(made.stderr)")
    let manifest = try #require(
      try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/manifest.json")))
        as? [String: Any])
    #expect((manifest["screening_policy"] as? [String: Any])?["action"] as? String == "reject")
    #expect((manifest["output_policy"] as? [String: Any])?["top_k"] as? Int == 2)
    #expect((manifest["labels"] as? [String])?.count == 10)
    let input = try #require((manifest["inputs"] as? [[String: Any]])?.first)
    #expect((input["reference_statistics"] as? [String: Any])?["mean"] != nil)

    let ragged = try pki.write("ragged.csv", "1,2,3\n4,5\n")
    let refused = try await ProcessTests.run(bin, ["bundle", "stats", ragged])
    #expect(
      refused.status != 0 && refused.stderr.contains("line 2: 2 columns, earlier rows have 3"), "\(refused.stderr)")
    let wrongWidth = try await ProcessTests.run(
      bin,
      [
        "bundle", "init", "--model", "\(fixtures)/mlp_digits.onnx", "--name", "digits", "--version", "1",
        "--out", pki.path("b2"), "--stats", ragged,
      ])
    #expect(wrongWidth.status != 0)
  }
}
