extension EvidenceBuilder.Measurements {
  /// The items the TPM event log measures, by name (docs/attestation.md): what decides what this server does.
  /// The TLS key and the audit checkpoint are left out: they change during a run and the claims bind them anyway.
  var tpmState: [String: String] {
    var state: [String: String] = ["executable": executableSHA256, "policy": policySHA256]
    if let c = configSHA256 { state["config"] = c }
    if let s = sbomSHA256 { state["sbom"] = s }
    if let c = clientCABundleSHA256 { state["client_ca_bundle"] = c }
    for (issuer, digest) in jwksSHA256 { state["jwks:\(issuer)"] = digest }
    for (i, digest) in trustSHA256.enumerated() { state["trust:\(i)"] = digest }
    for d in models { state["model:\(d.name)/\(d.version)"] = d.properties["manifest_digest"] ?? "" }
    return state
  }
}
