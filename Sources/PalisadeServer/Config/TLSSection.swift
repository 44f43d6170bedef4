public import PalisadeYAML

extension ServerConfig {
  /// `server.tls`. TLS 1.3 and a verified client certificate are always required; there is no setting to relax it.
  public struct TLS: ConfigSection {
    /// PEM: the server certificate followed by its intermediates.
    public var certificateChain: String
    /// PEM private key; refused when group or others can read it.
    public var privateKey: String
    /// PEM bundle of the CAs whose client certificates are accepted.
    public var clientCABundle: String

    public init(certificateChain: String, privateKey: String, clientCABundle: String) {
      self.certificateChain = certificateChain
      self.privateKey = privateKey
      self.clientCABundle = clientCABundle
    }

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self.init(
        certificateChain: context.resolve(try map.requiredString("certificate_chain")),
        privateKey: context.resolve(try map.requiredString("private_key")),
        clientCABundle: context.resolve(try map.requiredString("client_ca_bundle")))
    }
  }
}
