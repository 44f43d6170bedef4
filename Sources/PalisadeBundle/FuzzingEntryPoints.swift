package import Foundation

/// Package-visible doors to the parsers that stay internal on purpose (public callers only ever reach them through
/// a verified bundle), for the fuzz targets in `Sources/PalisadeFuzzTargets`. Nothing in the product calls these.
package enum BundleParsers {
  /// `model.sig` as the verifier reads it: the envelope, then (when the bytes carry one) the statement it signs,
  /// parsed directly so that mutations of the payload reach the statement parser without a valid signature.
  package static func signatureEnvelope(_ bytes: [UInt8]) throws(BundleError) {
    let envelope = try OMS.parseEnvelope(bytes)
    _ = try OMS.parseStatement(envelope.payload)
  }

  /// The whole signature check against `trust`: structure, trust rule, signer, signature, signed statement.
  package static func checkSignature(_ bytes: [UInt8], trust: TrustPolicy, modelName: String?, now: Date)
    async throws(BundleError)
  {
    _ = try await BundleVerifier.checkSignature(bytes, trust: trust, modelName: modelName, now: now)
  }

  /// The bundle manifest (`palisade.json`): strict JSON, typed decoding, then its validation rules.
  package static func manifest(_ bytes: [UInt8]) throws(BundleError) {
    try BundleManifest.decode(bytes).validate()
  }
}
