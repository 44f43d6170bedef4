public import PalisadeYAML

extension ServerConfig {
  /// `attestation:`, remote attestation (`palisade.v1.Attestation`).
  public struct Attestation: DefaultedConfigSection {
    /// PEM private key (P-256, P-384 or Ed25519) that signs evidence; without it `Attest` answers
    /// FAILED_PRECONDITION. Refused when group or others can read it.
    public var key: String?
    /// The CycloneDX SBOM of this build, whose SHA-256 the evidence reports as `sbom_sha256`. Default:
    /// `share/palisade/sbom.cdx.json` beside the executable's `bin/` (where the image puts it), when present.
    public var sbom: String?
    /// The TPM that roots the evidence (`attestation.tpm`); nil: software-signed evidence only.
    public var tpm: TPMAttestationConfig?
    public init(key: String?, sbom: String? = nil) {
      self.key = key
      self.sbom = sbom
    }
    public static let defaults = Attestation(key: nil)

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self.init(key: try map.string("key").map(context.resolve), sbom: try map.string("sbom").map(context.resolve))
      tpm = try map.map("tpm").map { t throws(YAMLError) in try TPMAttestationConfig(yaml: t) }
    }
  }
}
