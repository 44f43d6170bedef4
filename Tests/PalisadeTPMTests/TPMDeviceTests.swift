import Crypto
import Foundation
import PalisadeTPM
import PalisadeTestSupport
import Testing
import X509

/// The TPM layer against a real software TPM (swtpm), manufactured with EK certificates.
@Suite(.serialized) struct TPMDeviceTests {
  static let pcr = 23

  @Test func pcrResetExtendReadMatchesSoftwareReplay() throws {
    let swtpm = try SoftwareTPM.start()
    defer { swtpm.stop() }
    let tpm = try TPMDevice(tcti: swtpm.tcti)
    try tpm.pcrReset(Self.pcr)
    #expect(try tpm.pcrRead(Self.pcr) == [UInt8](repeating: 0, count: 32))
    var expected = [UInt8](repeating: 0, count: 32)
    for word in ["executable", "config", "policy"] {
      let digest = Array(SHA256.hash(data: Array(word.utf8)))
      try tpm.pcrExtend(Self.pcr, sha256: digest)
      expected = Array(SHA256.hash(data: expected + digest))
    }
    #expect(try tpm.pcrRead(Self.pcr) == expected)
    // Out-of-range indices and wrong digest sizes are refused before reaching the TPM.
    #expect(throws: TPMError.self) { try tpm.pcrExtend(24, sha256: expected) }
    #expect(throws: TPMError.self) { try tpm.pcrExtend(Self.pcr, sha256: [1, 2, 3]) }
    // PCR 0 is not resettable at locality 0: a TPM error, not a crash.
    #expect(throws: TPMError.self) { try tpm.pcrReset(0) }
  }

  @Test func attestationKeyIsStableRestrictedAndSignsQuotesOverTheNonce() throws {
    let swtpm = try SoftwareTPM.start()
    defer { swtpm.stop() }
    let tpm = try TPMDevice(tcti: swtpm.tcti)
    let ak = try tpm.createAttestationKey()
    #expect(ak.publicArea.isRestrictedP256SigningKey)
    // A primary key: the same key again from the same seed and template.
    #expect(try tpm.createAttestationKey().publicArea == ak.publicArea)

    try tpm.pcrReset(Self.pcr)
    try tpm.pcrExtend(Self.pcr, sha256: Array(SHA256.hash(data: Array("model".utf8))))
    let value = try tpm.pcrRead(Self.pcr)
    let nonce = (0..<32).map { UInt8($0) }
    let quote = try tpm.quote(key: ak, nonce: nonce, pcrs: [Self.pcr])
    let info = try TPMQuoteInfo(marshalled: quote.attest)
    #expect(info.extraData == nonce)
    #expect(info.selections.count == 1)
    #expect(info.selections.first?.hash == TPMConst.algSHA256)
    #expect(info.selections.first?.pcrs == [Self.pcr])
    #expect(info.pcrDigest == Array(SHA256.hash(data: value)))
    let signature = try TPMECDSASignature(marshalled: quote.signature)
    let key = try ak.publicArea.p256SigningKey()
    #expect(signature.verifies(quote.attest, key: key))
    var tampered = quote.attest
    tampered[tampered.count - 1] ^= 1
    #expect(!signature.verifies(tampered, key: key))
    #expect(throws: TPMError.self) { try tpm.quote(key: ak, nonce: [UInt8](repeating: 1, count: 65), pcrs: [Self.pcr]) }
  }

  @Test func endorsementCertificateMatchesTheEndorsementKeyAndChainsToTheManufacturer() async throws {
    let swtpm = try SoftwareTPM.start()
    defer { swtpm.stop() }
    let tpm = try TPMDevice(tcti: swtpm.tcti)
    let der = try tpm.nvRead(index: SoftwareTPM.eccEKCertificateIndex)
    let certificate = try Certificate(derEncoded: der)
    let ek = try tpm.readPublic(persistentHandle: SoftwareTPM.eccEKHandle)
    #expect(ek.curve == TPMConst.curveP384)
    let spki = try P384.KeyAgreement.PublicKey(rawRepresentation: ek.x + ek.y)
    #expect(P384.Signing.PublicKey(certificate.publicKey)?.rawRepresentation == spki.rawRepresentation)
  }

  @Test func credentialActivationReleasesTheSecretOnlyForTheAttestationKeyOfThisTPM() throws {
    let swtpm = try SoftwareTPM.start()
    defer { swtpm.stop() }
    let tpm = try TPMDevice(tcti: swtpm.tcti)
    let ak = try tpm.createAttestationKey()
    let ek = try tpm.readPublic(persistentHandle: SoftwareTPM.eccEKHandle)
    let secret = (0..<32).map { _ in UInt8.random(in: 0...255) }
    let challenge = try TPMCredential.make(ek: ek, objectName: try ak.publicArea.name, secret: secret)
    let released = try tpm.activateCredential(
      key: ak, ekHandle: SoftwareTPM.eccEKHandle, credentialBlob: challenge.credentialBlob,
      encryptedSecret: challenge.encryptedSecret)
    #expect(released == secret)
    // Sealed for another object name: the TPM refuses (integrity check), a typed error.
    var otherName = try ak.publicArea.name
    otherName[otherName.count - 1] ^= 1
    let wrong = try TPMCredential.make(ek: ek, objectName: otherName, secret: secret)
    #expect(throws: TPMError.self) {
      try tpm.activateCredential(
        key: ak, ekHandle: SoftwareTPM.eccEKHandle, credentialBlob: wrong.credentialBlob,
        encryptedSecret: wrong.encryptedSecret)
    }
    // Garbage from the wire is refused by the unmarshaller.
    #expect(throws: TPMError.self) {
      try tpm.activateCredential(
        key: ak, ekHandle: SoftwareTPM.eccEKHandle, credentialBlob: [0, 9, 1], encryptedSecret: [])
    }
  }

  @Test func anAbsentTPMIsATypedError() {
    #expect(throws: TPMError.self) { _ = try TPMDevice(tcti: "swtpm:host=127.0.0.1,port=1") }
    #expect(throws: TPMError.self) { _ = try TPMDevice(tcti: "device:/nonexistent/tpmrm0") }
  }
}
