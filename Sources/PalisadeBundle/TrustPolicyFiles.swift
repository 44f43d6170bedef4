import Foundation
import PalisadeIdentity

extension TrustPolicy {
  /// One trust rule as the server's configuration and `palisade bundle verify` state it: a model-name glob and the
  /// files that hold its keys and roots.
  public struct RuleFiles: Sendable, Equatable {
    /// Model-name glob (`*` within a path segment, `**` across).
    public var models: String
    /// PEM public keys (the model_signing "key" method).
    public var publicKeys: [String]
    /// PEM CA roots for the "certificate" method; the leaf must also match `signerSubject` / `signerSAN`.
    public var certificateRoots: [String]
    /// Glob on the signing certificate's subject common name.
    public var signerSubject: String?
    /// `dns:GLOB`, `uri:GLOB` or `email:GLOB` on the signing certificate's SANs.
    public var signerSAN: String?

    public init(
      models: String, publicKeys: [String] = [], certificateRoots: [String] = [], signerSubject: String? = nil,
      signerSAN: String? = nil
    ) {
      self.models = models
      self.publicKeys = publicKeys
      self.certificateRoots = certificateRoots
      self.signerSubject = signerSubject
      self.signerSAN = signerSAN
    }
  }

  /// Reads the key and root files of `rules` into a policy, in order; errors name the file.
  public static func load(_ rules: [RuleFiles]) throws -> TrustPolicy {
    try TrustPolicy(
      rules: rules.map { rule in
        var signers: [TrustedSigner] = []
        for path in rule.publicKeys {
          let pem: String
          do { pem = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw PEMFileError(path: path, reason: "cannot be read")
          }
          do { signers.append(try TrustedSigner.publicKey(pem: pem)) } catch {
            throw PEMFileError(path: path, reason: "\(error)")
          }
        }
        if !rule.certificateRoots.isEmpty {
          let san: SignerIdentityRequirement.SANPattern? = rule.signerSAN.map { s in
            if s.hasPrefix("dns:") { return .dns(String(s.dropFirst(4))) }
            if s.hasPrefix("uri:") { return .uri(String(s.dropFirst(4))) }
            return .email(String(s.drop { $0 != ":" }.dropFirst()))
          }
          let identity = try SignerIdentityRequirement(subjectCommonName: rule.signerSubject, san: san)
          var pems = ""
          for path in rule.certificateRoots {
            do { pems += try String(contentsOfFile: path, encoding: .utf8) + "\n" } catch {
              throw PEMFileError(path: path, reason: "cannot be read")
            }
          }
          do { signers.append(try TrustedSigner.certificate(rootsPEM: pems, identity: identity)) } catch {
            throw PEMFileError(path: rule.certificateRoots.joined(separator: ", "), reason: "\(error)")
          }
        }
        return TrustPolicy.Rule(modelPattern: rule.models, signers: signers)
      })
  }
}
