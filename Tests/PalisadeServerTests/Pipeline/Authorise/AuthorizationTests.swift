import Foundation
import GRPCCore
import PalisadeProto
import PalisadeTestSupport
import Testing

/// The policy file decides, over real calls.
@Suite struct AuthorizationTests {
  static let policy = """
    version: 1
    rules:
      - name: ops
        principals: [{spiffe: "spiffe://palisade.test/sa/ops"}]
        rpcs: [RepositoryModelUnload, RepositoryIndex]
      - name: no-infer-for-b
        effect: deny
        principals: [{spiffe: "spiffe://palisade.test/sa/b"}]
        rpcs: [ModelInfer, ModelStreamInfer]
      - name: limited
        principals: [{spiffe: "spiffe://palisade.test/sa/limited"}]
        rpcs: [ModelInfer]
        models: [simple]
        rate_limit: {per_second: 0.01, burst: 2}
      - name: new-versions-only
        principals: [{spiffe: "spiffe://palisade.test/sa/picky"}]
        rpcs: ["*"]
        versions: ">=2"
      - name: callers
        principals: [{spiffe_prefix: "spiffe://palisade.test/sa"}]
        rpcs: ["*"]
        models: [simple]
    """

  @Test func policyDecidesEachCall() async throws {
    let server = try await TestServer.start(
      models: [AddSubModel(), IdentityModel(datatype: .fp32)], policy: Self.policy)
    let a = try goodClient(server, "a")
    let b = try goodClient(server, "b")
    let ops = try goodClient(server, "ops")
    // a: simple yes, identity_fp32 no (models glob), admin no.
    _ = try await withClient(server, a) { try await $0.modelInfer(simpleRequest(raw: true)) }
    let otherModel = await rpcError {
      _ = try await withClient(server, a) { try await $0.modelMetadata(.with { $0.name = "identity_fp32" }) }
    }
    #expect(otherModel?.code == .permissionDenied)
    let adminByA = await rpcError {
      _ = try await withClient(server, a) { try await $0.repositoryModelUnload(.with { $0.modelName = "simple" }) }
    }
    #expect(adminByA?.code == .permissionDenied)
    // b: denied inference by an earlier deny rule, metadata still allowed by the later rule.
    let inferByB = await rpcError {
      _ = try await withClient(server, b) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    #expect(inferByB?.code == .permissionDenied)
    #expect(
      try await withClient(server, b) { try await $0.modelMetadata(.with { $0.name = "simple" }) }.name == "simple")
    // ops: may unload through its explicit admin rule.
    _ = try await withClient(server, ops) {
      try await $0.repositoryModelUnload(.with { $0.modelName = "identity_fp32" })
    }
    #expect(server.runtime.repository.index().map(\.name) == ["simple"])
    try await server.stop()
  }

  @Test func rateLimitIsEnforcedPerPrincipalWithRetryHint() async throws {
    let server = try await TestServer.start(models: [AddSubModel()], policy: Self.policy)
    let limited = try goodClient(server, "limited")
    let other = try goodClient(server, "a")
    try await withClient(server, limited) { client in
      _ = try await client.modelInfer(simpleRequest(raw: true))
      _ = try await client.modelInfer(simpleRequest(raw: true))
      let third = await rpcError { _ = try await client.modelInfer(simpleRequest(raw: true)) }
      #expect(third?.code == .resourceExhausted)
      #expect(third?.message.contains("retry after") == true, "\(String(describing: third))")
    }
    // Another principal is unaffected.
    for _ in 0..<5 { _ = try await withClient(server, other) { try await $0.modelInfer(simpleRequest(raw: true)) } }
    try await server.stop()
  }

  @Test func versionConstraintIsCheckedAgainstTheResolvedVersion() async throws {
    let server = try await TestServer.start(models: [AddSubModel(version: "1")], policy: Self.policy)
    let picky = try goodClient(server, "picky")
    let v1 = await rpcError {
      _ = try await withClient(server, picky) { try await $0.modelInfer(simpleRequest(raw: true)) }
    }
    #expect(v1?.code == .permissionDenied)
    server.runtime.repository.register(AddSubModel(version: "2"))
    let ok = try await withClient(server, picky) { try await $0.modelInfer(simpleRequest(raw: true)) }
    #expect(ok.modelVersion == "2")
    try await server.stop()
  }

  @Test func aPinnedCallerLearnsNothingAboutOtherVersions() async throws {
    // "picky" may use versions >= 2 only; version 1 exists, version 0 does not: both are refused alike, and the
    // metadata lists only what the rule allows.
    let server = try await TestServer.start(
      models: [AddSubModel(version: "1"), AddSubModel(version: "2")], policy: Self.policy)
    let picky = try goodClient(server, "picky")
    try await withClient(server, picky) { client in
      let meta = try await client.modelMetadata(.with { $0.name = "simple" })
      #expect(meta.versions == ["2"], "\(meta.versions)")
      for version in ["1", "0"] {
        let ready = await rpcError {
          _ = try await client.modelReady(
            .with {
              $0.name = "simple"
              $0.version = version
            })
        }
        #expect(ready?.code == .permissionDenied, "ModelReady v\(version): \(String(describing: ready))")
        let metadata = await rpcError {
          _ = try await client.modelMetadata(
            .with {
              $0.name = "simple"
              $0.version = version
            })
        }
        #expect(metadata?.code == .permissionDenied, "ModelMetadata v\(version): \(String(describing: metadata))")
      }
      #expect(
        try await client.modelReady(
          .with {
            $0.name = "simple"
            $0.version = "2"
          }
        ).ready)
    }
    try await server.stop()
  }

  @Test func modelNamesAndVersionsOutsideTheBundleRulesAreRefusedBeforeThePolicy() async throws {
    let server = try await TestServer.start(policy: Self.policy)
    let client = try goodClient(server)
    try await withClient(server, client) { client in
      // Unbounded names (whose globbing once took seconds and whose records took megabytes), names Swift would
      // call equal to "simple" or to a rule's pattern (the Kelvin sign for K, a combining accent), path tricks.
      let names = [
        String(repeating: "a-", count: 50_000), "\u{212A}simple", "simple\u{0301}", "/simple", "simple/", "a//b", "",
        "simple\n",
      ]
      for name in names {
        var r = simpleRequest(raw: true)
        r.modelName = name
        let e = await rpcError { _ = try await client.modelInfer(r) }
        #expect(e?.code == .invalidArgument, "\(name.prefix(20)): \(String(describing: e))")
        #expect(e?.message.contains("model name must be") == true && e?.message.contains("a-a-") == false)
        let m = await rpcError { _ = try await client.modelMetadata(.with { $0.name = name }) }
        #expect(m?.code == .invalidArgument, "metadata \(name.prefix(20)): \(String(describing: m))")
      }
      var r = simpleRequest(raw: true)
      r.modelVersion = String(repeating: "9", count: 65)
      #expect(await rpcError { _ = try await client.modelInfer(r) }?.code == .invalidArgument)
      r.modelVersion = "1\u{0660}"  // an Arabic-Indic digit
      #expect(await rpcError { _ = try await client.modelInfer(r) }?.code == .invalidArgument)
      // The ordinary call still works.
      _ = try await client.modelInfer(simpleRequest(raw: true))
    }
    try await server.stop()
  }

  @Test func everyRPCIsDeniedWithoutARule() async throws {
    // A principal outside every rule: each RPC except the token-exempt ServerLive is PERMISSION_DENIED, which
    // shows that no handler forgets to ask the policy.
    let server = try await TestServer.start(models: [AddSubModel()], policy: "version: 1\nrules: []")
    let nobody = try goodClient(server, "nobody")
    try await withClient(server, nobody) { client in
      #expect(try await client.serverLive(.init()).live)
      let calls: [(String, () async throws -> Void)] = [
        ("ServerReady", { _ = try await client.serverReady(.init()) }),
        ("ModelReady", { _ = try await client.modelReady(.with { $0.name = "simple" }) }),
        ("ServerMetadata", { _ = try await client.serverMetadata(.init()) }),
        ("ModelMetadata", { _ = try await client.modelMetadata(.with { $0.name = "simple" }) }),
        ("ModelInfer", { _ = try await client.modelInfer(simpleRequest(raw: true)) }),
        ("ModelStatistics", { _ = try await client.modelStatistics(.init()) }),
        ("RepositoryIndex", { _ = try await client.repositoryIndex(.init()) }),
        ("RepositoryModelLoad", { _ = try await client.repositoryModelLoad(.with { $0.modelName = "simple" }) }),
        ("RepositoryModelUnload", { _ = try await client.repositoryModelUnload(.with { $0.modelName = "simple" }) }),
      ]
      for (name, call) in calls {
        #expect(await rpcError(call)?.code == .permissionDenied, "\(name)")
      }
      let stream = try await client.modelStreamInfer(
        requestProducer: { try await $0.write(simpleRequest(raw: true)) },
        onResponse: { response in
          var out: [Inference_ModelStreamInferResponse] = []
          for try await m in response.messages { out.append(m) }
          return out
        })
      #expect(stream.first?.errorMessage.hasPrefix("PERMISSION_DENIED") == true)
    }
    #expect(server.runtime.repository.isReady(name: "simple", version: ""))
    try await server.stop()
  }
}
