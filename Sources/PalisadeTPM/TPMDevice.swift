import CTSS2
import Foundation

/// A TPM 2.0 reached through the TCG software stack (ESAPI over the TCTI loader). The TCTI string picks the
/// transport: `device:/dev/tpmrm0` in production (the kernel's resource manager), `swtpm:host=127.0.0.1,port=P` for
/// the software TPM in tests. ESAPI contexts are not thread-safe, so every command runs under one lock; TPM commands
/// take milliseconds and only attestation and measurement use them.
///
/// `@unchecked Sendable`: the two C contexts are set once in `init`, and every use of them is under `lock`.
public final class TPMDevice: @unchecked Sendable {
  private let lock = NSLock()
  private let tctiContext: OpaquePointer
  private let esys: OpaquePointer
  public let tcti: String

  // ESYS_TR values (tss2_esys.h); written out because Swift does not import the C macros' casts.
  static let trNone: UInt32 = 0xfff
  static let trPassword: UInt32 = 0x0ff
  static let trEndorsement: UInt32 = 0x10B
  static let trOwner: UInt32 = 0x101
  static let sessionPolicy: UInt8 = 0x01
  static let continueSession: UInt8 = 0x01
  static let rcInitialize: UInt32 = 0x100

  /// Opens the TPM and starts it if nothing has (TPM2_Startup(CLEAR); "already started" is fine).
  public init(tcti: String) throws(TPMError) {
    self.tcti = tcti
    var tctiContext: OpaquePointer? = nil
    var rc = Tss2_TctiLdr_Initialize(tcti, &tctiContext)
    guard rc == 0, let tctiContext else { throw .transport("open \(tcti)", code: rc) }
    var esys: OpaquePointer? = nil
    rc = Esys_Initialize(&esys, tctiContext, nil)
    guard rc == 0, let esys else {
      var t: OpaquePointer? = tctiContext
      Tss2_TctiLdr_Finalize(&t)
      throw .transport("ESAPI initialise", code: rc)
    }
    rc = Esys_Startup(esys, 0)
    if rc != 0 && rc & 0xfff != Self.rcInitialize {
      var e: OpaquePointer? = esys
      Esys_Finalize(&e)
      var t: OpaquePointer? = tctiContext
      Tss2_TctiLdr_Finalize(&t)
      throw .command("Startup", code: rc)
    }
    self.tctiContext = tctiContext
    self.esys = esys
  }

  deinit {
    var e: OpaquePointer? = esys
    Esys_Finalize(&e)
    var t: OpaquePointer? = tctiContext
    Tss2_TctiLdr_Finalize(&t)
  }

  /// Runs `body` with the ESAPI context, under the lock.
  private func with<T>(_ body: (OpaquePointer) throws(TPMError) -> T) throws(TPMError) -> T {
    lock.lock()
    defer { lock.unlock() }
    return try body(esys)
  }

  static func check(_ rc: UInt32, _ what: String) throws(TPMError) {
    if rc != 0 { throw .command(what, code: rc) }
  }

  static func pcrHandle(_ index: Int) throws(TPMError) -> UInt32 {
    guard (0..<24).contains(index) else { throw .invalidArgument("PCR \(index) is not 0–23") }
    return UInt32(index)
  }

  // MARK: PCRs

  /// TPM2_PCR_Reset (locality 0 may reset PCR 16 and 23 on a PC-client TPM).
  public func pcrReset(_ index: Int) throws(TPMError) {
    let handle = try Self.pcrHandle(index)
    try with { esys throws(TPMError) in
      try Self.check(Esys_PCR_Reset(esys, handle, Self.trPassword, Self.trNone, Self.trNone), "PCR_Reset(\(index))")
    }
  }

  /// TPM2_PCR_Extend of the SHA-256 bank with `digest` (32 bytes).
  public func pcrExtend(_ index: Int, sha256 digest: [UInt8]) throws(TPMError) {
    let handle = try Self.pcrHandle(index)
    guard digest.count == 32 else { throw .invalidArgument("a SHA-256 extend takes 32 bytes") }
    var w = TPMWriter()
    w.u32(1)
    w.u16(TPMConst.algSHA256)
    w.raw(digest)
    var values = try Self.unmarshal(w.bytes, TPML_DIGEST_VALUES(), Tss2_MU_TPML_DIGEST_VALUES_Unmarshal)
    try with { esys throws(TPMError) in
      try Self.check(
        Esys_PCR_Extend(esys, handle, Self.trPassword, Self.trNone, Self.trNone, &values), "PCR_Extend(\(index))")
    }
  }

  /// The SHA-256 bank value of PCR `index`.
  public func pcrRead(_ index: Int) throws(TPMError) -> [UInt8] {
    _ = try Self.pcrHandle(index)
    var selection = try Self.unmarshal(
      try TPMQuoteInfo.selection(hash: TPMConst.algSHA256, pcrs: [index]),
      TPML_PCR_SELECTION(), Tss2_MU_TPML_PCR_SELECTION_Unmarshal)
    return try with { esys throws(TPMError) in
      var counter: UInt32 = 0
      var selOut: UnsafeMutablePointer<TPML_PCR_SELECTION>? = nil
      var values: UnsafeMutablePointer<TPML_DIGEST>? = nil
      defer {
        Esys_Free(selOut)
        Esys_Free(values)
      }
      try Self.check(
        Esys_PCR_Read(esys, Self.trNone, Self.trNone, Self.trNone, &selection, &counter, &selOut, &values), "PCR_Read")
      guard let values, values.pointee.count == 1 else { throw .malformed("PCR_Read returned no value") }
      let bytes = try Self.marshal(values, Tss2_MU_TPML_DIGEST_Marshal)
      var r = TPMReader(bytes)
      _ = try r.u32("count")
      return try r.sized("digest")
    }
  }

  // MARK: Keys

  /// Creates (or re-creates: a primary key is derived from the hierarchy seed and the template, so it is the same
  /// key every time) the attestation key as a primary key of the endorsement hierarchy, and keeps it loaded.
  public func createAttestationKey() throws(TPMError) -> TPMAttestationKey {
    var inPublic = try Self.unmarshal(
      [UInt8(TPMECCPublic.attestationKeyTemplate.count >> 8), UInt8(TPMECCPublic.attestationKeyTemplate.count & 0xff)]
        + TPMECCPublic.attestationKeyTemplate, TPM2B_PUBLIC(), Tss2_MU_TPM2B_PUBLIC_Unmarshal)
    var sensitive = TPM2B_SENSITIVE_CREATE()
    var outside = TPM2B_DATA()
    var creationPCR = TPML_PCR_SELECTION()
    return try with { esys throws(TPMError) in
      var handle: UInt32 = Self.trNone
      var outPublic: UnsafeMutablePointer<TPM2B_PUBLIC>? = nil
      var creationData: UnsafeMutablePointer<TPM2B_CREATION_DATA>? = nil
      var creationHash: UnsafeMutablePointer<TPM2B_DIGEST>? = nil
      var ticket: UnsafeMutablePointer<TPMT_TK_CREATION>? = nil
      defer {
        Esys_Free(outPublic)
        Esys_Free(creationData)
        Esys_Free(creationHash)
        Esys_Free(ticket)
      }
      try Self.check(
        Esys_CreatePrimary(
          esys, Self.trEndorsement, Self.trPassword, Self.trNone, Self.trNone, &sensitive, &inPublic, &outside,
          &creationPCR, &handle, &outPublic, &creationData, &creationHash, &ticket),
        "CreatePrimary(attestation key)")
      guard let outPublic else { throw .malformed("CreatePrimary returned no public area") }
      var publicArea = outPublic.pointee.publicArea
      let area = try Self.marshal(&publicArea, Tss2_MU_TPMT_PUBLIC_Marshal)
      return TPMAttestationKey(handle: handle, publicArea: try TPMECCPublic(marshalled: area))
    }
  }

  /// The marshalled TPMT_PUBLIC of a persistent object (the endorsement key at its TCG handle, e.g. 0x81010001).
  public func readPublic(persistentHandle: UInt32) throws(TPMError) -> TPMECCPublic {
    try with { esys throws(TPMError) in
      let object = try Self.fromTPMPublic(esys, persistentHandle)
      defer {
        var o = object
        _ = Esys_TR_Close(esys, &o)
      }
      var outPublic: UnsafeMutablePointer<TPM2B_PUBLIC>? = nil
      var name: UnsafeMutablePointer<TPM2B_NAME>? = nil
      var qualified: UnsafeMutablePointer<TPM2B_NAME>? = nil
      defer {
        Esys_Free(outPublic)
        Esys_Free(name)
        Esys_Free(qualified)
      }
      try Self.check(
        Esys_ReadPublic(esys, object, Self.trNone, Self.trNone, Self.trNone, &outPublic, &name, &qualified),
        "ReadPublic(0x\(String(persistentHandle, radix: 16)))")
      guard let outPublic else { throw .malformed("ReadPublic returned nothing") }
      var publicArea = outPublic.pointee.publicArea
      let area = try Self.marshal(&publicArea, Tss2_MU_TPMT_PUBLIC_Marshal)
      return try TPMECCPublic(marshalled: area)
    }
  }

  // MARK: Quote

  /// TPM2_Quote over `pcrs` (SHA-256 bank) with `nonce` as qualifyingData, signed by `key`.
  public func quote(key: TPMAttestationKey, nonce: [UInt8], pcrs: [Int]) throws(TPMError) -> TPMQuote {
    guard nonce.count <= 64 else { throw .invalidArgument("qualifyingData is at most 64 bytes") }
    var qualifying = try Self.unmarshal(
      [UInt8(nonce.count >> 8), UInt8(nonce.count & 0xff)] + nonce, TPM2B_DATA(), Tss2_MU_TPM2B_DATA_Unmarshal)
    var selection = try Self.unmarshal(
      try TPMQuoteInfo.selection(hash: TPMConst.algSHA256, pcrs: pcrs), TPML_PCR_SELECTION(),
      Tss2_MU_TPML_PCR_SELECTION_Unmarshal)
    var scheme = TPMT_SIG_SCHEME()
    scheme.scheme = TPMConst.algNull  // the key's own scheme (ECDSA/SHA-256)
    return try with { esys throws(TPMError) in
      var quoted: UnsafeMutablePointer<TPM2B_ATTEST>? = nil
      var signature: UnsafeMutablePointer<TPMT_SIGNATURE>? = nil
      defer {
        Esys_Free(quoted)
        Esys_Free(signature)
      }
      try Self.check(
        Esys_Quote(
          esys, key.handle, Self.trPassword, Self.trNone, Self.trNone, &qualifying, &scheme, &selection, &quoted,
          &signature),
        "Quote")
      guard let quoted, let signature else { throw .malformed("Quote returned nothing") }
      let attest = try Self.marshal(quoted, Tss2_MU_TPM2B_ATTEST_Marshal)
      return TPMQuote(
        attest: Array(attest.dropFirst(2)), signature: try Self.marshal(signature, Tss2_MU_TPMT_SIGNATURE_Marshal))
    }
  }

  // MARK: NV

  /// The contents of NV index `index` (e.g. the EK certificate at 0x01C00002/0x01C0000A/0x01C00016), read with
  /// the index's own (empty) authorisation, else the owner's.
  public func nvRead(index: UInt32) throws(TPMError) -> [UInt8] {
    try with { esys throws(TPMError) in
      let nv = try Self.fromTPMPublic(esys, index)
      defer {
        var o = nv
        _ = Esys_TR_Close(esys, &o)
      }
      var nvPublic: UnsafeMutablePointer<TPM2B_NV_PUBLIC>? = nil
      var nvName: UnsafeMutablePointer<TPM2B_NAME>? = nil
      defer {
        Esys_Free(nvPublic)
        Esys_Free(nvName)
      }
      try Self.check(
        Esys_NV_ReadPublic(esys, nv, Self.trNone, Self.trNone, Self.trNone, &nvPublic, &nvName), "NV_ReadPublic")
      guard let nvPublic else { throw .malformed("NV_ReadPublic returned nothing") }
      let size = Int(nvPublic.pointee.nvPublic.dataSize)
      var out: [UInt8] = []
      for auth in [nv, Self.trOwner] {
        out = []
        var failed: UInt32 = 0
        while out.count < size {
          let chunk = UInt16(min(512, size - out.count))
          var data: UnsafeMutablePointer<TPM2B_MAX_NV_BUFFER>? = nil
          let rc = Esys_NV_Read(
            esys, auth, nv, Self.trPassword, Self.trNone, Self.trNone, chunk, UInt16(out.count), &data)
          defer { Esys_Free(data) }
          guard rc == 0, let data else {
            failed = rc
            break
          }
          let bytes = try Self.marshal(data, Tss2_MU_TPM2B_MAX_NV_BUFFER_Marshal)
          guard bytes.count > 2 else {
            failed = 1
            break
          }
          out += bytes.dropFirst(2)
        }
        if failed == 0 { return out }
        if auth == Self.trOwner { throw .command("NV_Read(0x\(String(index, radix: 16)))", code: failed) }
      }
      return out
    }
  }

  // MARK: Credential activation

  /// TPM2_ActivateCredential: releases the secret a verifier sealed with TPMCredential.make to the endorsement key
  /// at `ekHandle` for the name of `key`; the TPM does so only when both live in it. The EK is used with its (empty)
  /// user auth when its attributes allow it (userWithAuth: the TCG high-range templates, swtpm's), else through a
  /// policy session satisfying the TCG low-range EK policy A (PolicySecret of the endorsement hierarchy).
  public func activateCredential(
    key: TPMAttestationKey, ekHandle: UInt32, credentialBlob: [UInt8], encryptedSecret: [UInt8]
  ) throws(TPMError) -> [UInt8] {
    var blob = try Self.unmarshal(credentialBlob, TPM2B_ID_OBJECT(), Tss2_MU_TPM2B_ID_OBJECT_Unmarshal)
    var secret = try Self.unmarshal(encryptedSecret, TPM2B_ENCRYPTED_SECRET(), Tss2_MU_TPM2B_ENCRYPTED_SECRET_Unmarshal)
    let ekPublic = try readPublic(persistentHandle: ekHandle)
    let ekNameAlg = ekPublic.nameAlg
    return try with { esys throws(TPMError) in
      let ek = try Self.fromTPMPublic(esys, ekHandle)
      defer {
        var o = ek
        _ = Esys_TR_Close(esys, &o)
      }
      if ekPublic.attributes.contains(.userWithAuth) {
        var certInfo: UnsafeMutablePointer<TPM2B_DIGEST>? = nil
        defer { Esys_Free(certInfo) }
        try Self.check(
          Esys_ActivateCredential(
            esys, key.handle, ek, Self.trPassword, Self.trPassword, Self.trNone, &blob, &secret, &certInfo),
          "ActivateCredential")
        guard let certInfo else { throw .malformed("ActivateCredential returned nothing") }
        return Array(try Self.marshal(certInfo, Tss2_MU_TPM2B_DIGEST_Marshal).dropFirst(2))
      }
      var symmetric = TPMT_SYM_DEF()
      symmetric.algorithm = TPMConst.algNull
      var session: UInt32 = Self.trNone
      try Self.check(
        Esys_StartAuthSession(
          esys, Self.trNone, Self.trNone, Self.trNone, Self.trNone, Self.trNone, nil, Self.sessionPolicy, &symmetric,
          ekNameAlg, &session), "StartAuthSession")
      // Kept open by the TPM after use, so that it is flushed here whatever happens.
      _ = Esys_TRSess_SetAttributes(esys, session, Self.continueSession, 0xff)
      defer { _ = Esys_FlushContext(esys, session) }
      var timeout: UnsafeMutablePointer<TPM2B_TIMEOUT>? = nil
      var ticket: UnsafeMutablePointer<TPMT_TK_AUTH>? = nil
      defer {
        Esys_Free(timeout)
        Esys_Free(ticket)
      }
      try Self.check(
        Esys_PolicySecret(
          esys, Self.trEndorsement, session, Self.trPassword, Self.trNone, Self.trNone, nil, nil, nil, 0, &timeout,
          &ticket),
        "PolicySecret(endorsement)")
      var certInfo: UnsafeMutablePointer<TPM2B_DIGEST>? = nil
      defer { Esys_Free(certInfo) }
      try Self.check(
        Esys_ActivateCredential(esys, key.handle, ek, Self.trPassword, session, Self.trNone, &blob, &secret, &certInfo),
        "ActivateCredential")
      guard let certInfo else { throw .malformed("ActivateCredential returned nothing") }
      return Array(try Self.marshal(certInfo, Tss2_MU_TPM2B_DIGEST_Marshal).dropFirst(2))
    }
  }

  // MARK: Helpers

  static func fromTPMPublic(_ esys: OpaquePointer, _ handle: UInt32) throws(TPMError) -> UInt32 {
    var object: UInt32 = trNone
    try check(
      Esys_TR_FromTPMPublic(esys, handle, trNone, trNone, trNone, &object),
      "TR_FromTPMPublic(0x\(String(handle, radix: 16)))")
    return object
  }

  /// Parses `bytes` into a C structure with the TSS's own unmarshaller (which checks every size), all of them.
  static func unmarshal<T>(
    _ bytes: [UInt8], _ initial: T,
    _ f: (UnsafePointer<UInt8>?, Int, UnsafeMutablePointer<Int>?, UnsafeMutablePointer<T>?) -> UInt32
  ) throws(TPMError) -> T {
    var value = initial
    var offset = 0
    let rc = bytes.withUnsafeBufferPointer { f($0.baseAddress, $0.count, &offset, &value) }
    guard rc == 0, offset == bytes.count else { throw .malformed("\(T.self) (rc 0x\(String(rc, radix: 16)))") }
    return value
  }

  /// Marshals a C structure with the TSS's marshaller.
  static func marshal<T>(
    _ value: UnsafePointer<T>,
    _ f: (UnsafePointer<T>?, UnsafeMutablePointer<UInt8>?, Int, UnsafeMutablePointer<Int>?) -> UInt32
  ) throws(TPMError) -> [UInt8] {
    var buffer = [UInt8](repeating: 0, count: 4096)
    var offset = 0
    let rc = buffer.withUnsafeMutableBufferPointer { f(value, $0.baseAddress, $0.count, &offset) }
    guard rc == 0 else { throw .malformed("marshalling \(T.self) (rc 0x\(String(rc, radix: 16)))") }
    return Array(buffer.prefix(offset))
  }
}

/// The attestation key loaded in a TPM: its ESAPI handle there and its public area.
public struct TPMAttestationKey: Sendable {
  let handle: UInt32
  public let publicArea: TPMECCPublic
}

/// What TPM2_Quote returned: the TPMS_ATTEST bytes the TPM signed, and the marshalled TPMT_SIGNATURE.
public struct TPMQuote: Sendable, Equatable {
  public var attest: [UInt8]
  public var signature: [UInt8]
  public init(attest: [UInt8], signature: [UInt8]) {
    self.attest = attest
    self.signature = signature
  }
}
