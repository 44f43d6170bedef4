import PalisadeServer
import PalisadeYAML
import Testing

@Suite struct ConfigTests {
  static let auth = "\nauth: {audience: p, issuers: [{issuer: i, jwks: j.json}]}\npolicy: {file: policy.yaml}"
  let minimal = """
    server:
      tls:
        certificate_chain: s.pem
        private_key: /abs/s.key
        client_ca_bundle: ca.pem
    """ + ConfigTests.auth

  func error(_ text: String) -> YAMLError? {
    do {
      _ = try ServerConfig.parse(text, file: "c.yaml", baseDirectory: "/etc/p")
      return nil
    } catch { return error }
  }

  @Test func minimalConfigGetsSafeDefaults() throws {
    let c = try ServerConfig.parse(minimal, baseDirectory: "/etc/p")
    #expect(c.server.listen == .init(host: "127.0.0.1", port: 8443))
    #expect(c.server.tls.certificateChain == "/etc/p/s.pem")
    #expect(c.server.tls.privateKey == "/abs/s.key")
    #expect(c.server.limits.maxMessageBytes == 64 << 20)
    #expect(c.admin.listen == .init(host: "127.0.0.1", port: 9464))
    #expect(c.server.connection.maxAgeSeconds == 3600)
    #expect(c.logging.format == .json)
    #expect(c.auth.issuers.first?.jwks == "/etc/p/j.json")
    #expect(c.auth.issuers.first?.requireCertificateBinding == true)
    #expect(c.auth.exemptRPCs == ["ServerLive", "Check", "Watch"])
    #expect(c.auth.maxLifetimeSeconds == 900)
    #expect(c.policy.file == "/etc/p/policy.yaml")
    #expect(c.reload.intervalSeconds == 5)
    #expect(c.admin.maxConnections == 64 && c.admin.maxConnectionsPerAddress == 16)
    #expect(c.admin.maxMetricsRendersPerSecond == 20)
    // An unset per-address cap follows a lowered total.
    let lowered = try ServerConfig.parse(minimal + "\nadmin: {max_connections: 4}", baseDirectory: "/etc/p")
    #expect(lowered.admin.maxConnectionsPerAddress == 4)
  }

  @Test func schedulingScreeningAndAccessLogAreRead() throws {
    let c = try ServerConfig.parse(
      minimal + """

        scheduling:
          max_concurrent_executions: 3
          model_max_concurrent_executions: 2
          queue_limit: 10
          model_queue_limit: 5
          batching: {enabled: false, max_batch: 16, max_delay_us: 100}
          circuit_breaker: {failure_threshold: 2, open_ms: 500, half_open_probes: 3, slow_call_ms: 250}
        screening:
          drift_window: 50
          extraction_monitor: {enabled: false, history: 64, window: 40, normality_threshold: 0.7, ood_share_threshold: 0.25, max_principals: 9}
        logging: {access_log: false}
        """, baseDirectory: "/etc/p")
    #expect(c.scheduling.maxConcurrentExecutions == 3 && c.scheduling.modelMaxConcurrentExecutions == 2)
    #expect(c.scheduling.queueLimit == 10 && c.scheduling.modelQueueLimit == 5)
    #expect(!c.scheduling.batching && c.scheduling.maxBatch == 16 && c.scheduling.maxDelay == .microseconds(100))
    #expect(
      c.scheduling.breaker
        == .init(failureThreshold: 2, openDuration: .milliseconds(500), halfOpenProbes: 3, slowCall: .milliseconds(250))
    )
    #expect(c.screening.driftWindow == 50 && !c.screening.extractionMonitor)
    #expect(
      c.screening.extraction
        == .init(history: 64, window: 40, normalityThreshold: 0.7, oodShareThreshold: 0.25, maxPrincipals: 9))
    #expect(!c.logging.accessLog)
    let defaults = try ServerConfig.parse(minimal, baseDirectory: "/etc/p")
    #expect(defaults.scheduling.batching && defaults.scheduling.maxBatch == 32 && defaults.logging.accessLog)
    #expect(error(minimal + "\nscheduling: {queue_limit: 0}")?.description.contains("queue_limit") == true)
    #expect(error(minimal + "\nscheduling: {batching: {max_delay: 3}}")?.description.contains("max_delay") == true)
    #expect(
      error(minimal + "\nscreening: {extraction_monitor: {normality_threshold: 2}}")?.description.contains(
        "normality_threshold") == true)
  }

  @Test func auditAndEgressSectionsAreReadAndRefusedWithTheReason() throws {
    let c = try ServerConfig.parse(
      minimal + """

        audit: {directory: audit, key: audit.key, durability: batched, checkpoint_every_records: 5}
        egress: {report_socket: r.sock, report_socket_mode: "0620", proxy: "127.0.0.1:3128", checkpoint_url: "https://c.example/cp"}
        models: {integrity_check_seconds: 0}
        attestation: {key: att.key}
        """, baseDirectory: "/etc/p")
    #expect(
      c.audit?.directory == "/etc/p/audit" && c.audit?.durability == "batched" && c.audit?.checkpointEveryRecords == 5)
    #expect(c.egress.reportSocket == "/etc/p/r.sock" && c.egress.reportSocketMode == 0o620)
    #expect(c.egress.proxy == "127.0.0.1:3128" && c.egress.checkpointURL == "https://c.example/cp")
    #expect(c.models.integrityCheckSeconds == 0 && c.attestation.key == "/etc/p/att.key")
    #expect(error(minimal + "\naudit: {directory: a}")?.description.contains("audit.key") == true)
    #expect(
      error(minimal + "\naudit: {directory: a, key: k, durability: eventually}")?.description.contains("durability")
        == true)
    #expect(
      error(minimal + "\negress: {checkpoint_url: \"https://c.example\"}")?.description.contains("egress.proxy") == true
    )
    #expect(
      error(minimal + "\negress: {proxy: \"p:1\", checkpoint_url: \"ftp://c\"}")?.description.contains("checkpoint_url")
        == true)
    #expect(
      error(minimal + "\negress: {report_socket_mode: \"rw\"}")?.description.contains("report_socket_mode") == true)
    #expect(error(minimal + "\negress: {proxy: sidecar}")?.description.contains("egress.proxy") == true)
  }

  @Test func unauthorizedCallBudgetIsConfiguredAndReachesTheTransport() throws {
    func config(_ http2: String) -> String {
      """
      server:
        tls: {certificate_chain: s.pem, private_key: s.key, client_ca_bundle: ca.pem}
        http2: {\(http2)}
      """ + ConfigTests.auth
    }
    let c = try ServerConfig.parse(
      config("unauthorized_calls_per_second: 50, unauthorized_call_burst: 120"), baseDirectory: "/etc/p")
    #expect(c.server.http2.unauthorizedCallsPerSecond == 50 && c.server.http2.unauthorizedCallBurst == 120)
    let transport = ServerRuntime.transportConfiguration(c.server, exemptRPCs: ["ServerLive"])
    #expect(transport.protections.unauthorizedCallsPerSecond == 50)
    #expect(transport.protections.unauthorizedCallBurst == 120)
    #expect(transport.tokenExemptMethods == ["ServerLive"], "auth.exempt_rpcs decide what is charged at headers")
    let defaults = try ServerConfig.parse(minimal, baseDirectory: "/")
    #expect(
      ServerRuntime.transportConfiguration(defaults.server, exemptRPCs: Set(defaults.auth.exemptRPCs))
        .tokenExemptMethods == ["ServerLive", "Check", "Watch"])
    for bad in ["unauthorized_calls_per_second: 0", "unauthorized_call_burst: 0", "unauthorized_call_burst: -5"] {
      let e = error(config(bad))
      #expect(e?.description.contains(String(bad.prefix { $0 != ":" })) == true, "\(bad): \(String(describing: e))")
    }
  }

  @Test func annotatedExampleParses() throws {
    let c = try ServerConfig.load(path: "\(repositoryRoot)/deploy/palisade.example.yaml")
    #expect(c.server.limits.maxConcurrentStreams == 128)
    // The example documents the HTTP/2 guards' defaults, which are swift-nio-http2's own where it has them.
    #expect(c.server.http2 == .defaults)
    #expect(ServerRuntime.transportConfiguration(c.server, exemptRPCs: Set(c.auth.exemptRPCs)).protections == .defaults)
    #expect(c.models.trust.count == 2)
    #expect(c.models.trust[1].signerSAN == "uri:spiffe://palisade.dev/ns/team-a/*")
  }

  @Test func everyKeyIsRead() throws {
    let c = try ServerConfig.parse(
      """
      server:
        tls: {certificate_chain: s.pem, private_key: /abs/s.key, client_ca_bundle: ca.pem}
        listen: "[::1]:9000"
        limits: {max_message_bytes: 2048, max_concurrent_streams: 4}
        connection: {keepalive_seconds: 5, keepalive_timeout_seconds: 2, max_idle_seconds: 9, max_age_seconds: 30, max_age_grace_seconds: 3}
        shutdown_grace_seconds: 7
      admin: {enabled: false, listen: "127.0.0.1:1"}
      models: {required: [a, b]}
      logging: {level: debug, format: text}
      reload: {interval_seconds: 2}
      auth:
        audience: p
        exempt_rpcs: [Check]
        algorithms: [ES256]
        types: [JWT]
        leeway_seconds: 5
        max_lifetime_seconds: 300
        issuers:
          - {issuer: i, kind: spiffe, jwks: j.json, trust_domain: td, require_certificate_binding: true}
      policy: {file: p.yaml}
      """, baseDirectory: "/")
    #expect(c.server.listen == .init(host: "::1", port: 9000))
    #expect(c.server.limits == .init(maxMessageBytes: 2048, maxConcurrentStreams: 4))
    #expect(c.server.connection.maxAgeGraceSeconds == 3)
    #expect(c.server.shutdownGraceSeconds == 7)
    #expect(!c.admin.enabled)
    #expect(c.models.required == ["a", "b"])
    #expect(c.logging.level == "debug")
    #expect(c.reload.intervalSeconds == 2)
    #expect(c.auth.exemptRPCs == ["Check"])
    #expect(c.auth.issuers.first?.kind == .spiffe)
    #expect(c.auth.issuers.first?.requireCertificateBinding == true)
    #expect(c.auth.leewaySeconds == 5)
  }

  static let ok = "server: {tls: {certificate_chain: a, private_key: b, client_ca_bundle: c}}"
  static let authText = "\nauth: {audience: p, issuers: [{issuer: i, jwks: j}]}\npolicy: {file: p.yaml}"

  @Test(arguments: [
    ("", "server", "is required"),
    ("server: {}", "server.tls", "is required"),
    ("server: {tls: {certificate_chain: a, private_key: b}}", "server.tls.client_ca_bundle", "is required"),
    (
      "server: {tls: {certificate_chain: a, private_key: b, client_ca_bundle: c, extra: 1}}", "server.tls.extra",
      "unknown setting"
    ),
    (
      "server: {listen: 'nocolon', tls: {certificate_chain: a, private_key: b, client_ca_bundle: c}}", "server.listen",
      "host:port"
    ),
    (
      "server: {listen: 'h:70000', tls: {certificate_chain: a, private_key: b, client_ca_bundle: c}}", "server.listen",
      "0 to 65535"
    ),
    (
      "server: {limits: {max_message_bytes: 10}, tls: {certificate_chain: a, private_key: b, client_ca_bundle: c}}",
      "server.limits.max_message_bytes", "between"
    ),
    (
      "server: {limits: {max_message_bytes: lots}, tls: {certificate_chain: a, private_key: b, client_ca_bundle: c}}",
      "server.limits.max_message_bytes", "integer"
    ),
    (Self.ok + Self.authText + "\nlogging: {level: loud}", "logging.level", "one of"),
    (Self.ok + Self.authText + "\nadmin: {enabled: yes please}", "admin.enabled", "true or false"),
    (
      Self.ok + Self.authText + "\nadmin: {max_connections: 4, max_connections_per_address: 5}",
      "admin.max_connections_per_address", "must not exceed max_connections (4)"
    ),
    (
      Self.ok + Self.authText + "\nadmin: {max_metrics_renders_per_second: 0}", "admin.max_metrics_renders_per_second",
      "between 1 and 10000"
    ),
    (Self.ok + Self.authText + "\nmodel: {}", "model", "unknown setting"),
    (Self.ok, "auth", "is required"),
    (Self.ok + "\nauth: {audience: p}", "auth.issuers", "at least one"),
    (Self.ok + "\nauth: {issuers: [{issuer: i, jwks: j}]}", "auth.audience", "is required"),
    (
      Self.ok + "\nauth: {audience: p, algorithms: [HS256], issuers: [{issuer: i, jwks: j}]}", "auth.algorithms",
      "never"
    ),
    (
      Self.ok + "\nauth: {audience: p, algorithms: [none], issuers: [{issuer: i, jwks: j}]}", "auth.algorithms",
      "not allowed"
    ),
    (
      Self.ok + "\nauth: {audience: p, leeway_seconds: 300, issuers: [{issuer: i, jwks: j}]}", "auth.leeway_seconds",
      "between 0 and 60"
    ),
    (
      Self.ok + "\nauth: {audience: p, issuers: [{issuer: i, kind: spiffe, jwks: j}]}", "auth.issuers[0].trust_domain",
      "required"
    ),
    (
      Self.ok + "\nauth: {audience: p, issuers: [{issuer: i, jwks: j, jku: x}]}", "auth.issuers[0].jku",
      "unknown setting"
    ),
    (Self.ok + "\nauth: {audience: p, issuers: [{issuer: i, jwks: j}]}", "policy", "is required"),
    (
      Self.ok + "\nauth: {audience: p, exempt_rpcs: [ModelInfr], issuers: [{issuer: i, jwks: j}]}", "auth.exempt_rpcs",
      "unknown RPC"
    ),
    (
      Self.ok + Self.authText + "\nmodels: {directories: [m], trust: [{models: x, public_keys: [k]}]}",
      "models.state_file", "is required"
    ),
    (Self.ok + Self.authText + "\nmodels: {directories: [m], state_file: s}", "models.trust", "is required"),
    (
      Self.ok + Self.authText + "\nmodels: {trust: [{models: x}]}", "models.trust[0]",
      "public_keys or certificate_roots"
    ),
    (
      Self.ok + Self.authText + "\nmodels: {trust: [{models: x, certificate_roots: [r]}]}",
      "models.trust[0].certificate_roots", "signer_subject or signer_san"
    ),
    (
      Self.ok + Self.authText + "\nmodels: {trust: [{models: x, certificate_roots: [r], signer_san: 'spiffe://x'}]}",
      "models.trust[0].signer_san", "dns:, uri: or email:"
    ),
    ("server: [1, 2]", "server", "mapping"),
    ("server: {tls: {certificate_chain: a, private_key: b, client_ca_bundle: c}}\nserver: {}", "", "duplicated key"),
    ("- just a list", "", "mapping"),
    ("server: {tls: {certificate_chain: [a, b", "", "not valid YAML"),
  ])
  func malformedConfigNamesTheKey(text: String, path: String, message: String) {
    let e = error(text)
    #expect(e != nil)
    #expect(e?.path == path, "\(String(describing: e))")
    #expect(e?.message.contains(message) == true, "\(String(describing: e))")
    #expect(e?.description.hasPrefix("c.yaml") == true)
  }

  @Test func errorsCarryLineNumbers() {
    let e = error(
      "# comment\nserver:\n  tls:\n    certificate_chain: a\n    private_key: b\n    client_ca_bundle: c\n  limits:\n    max_concurrent_streams: 0\n"
        + Self.authText)
    #expect(e?.line == 8, "\(String(describing: e))")
  }
}

import Foundation
