import Foundation
public import PalisadeTPM

/// Measured start and TPM quotes (attestation.tpm, docs/attestation.md). Holds the TPM, the attestation key loaded
/// in it, the endorsement key's public part and certificate, and the event log of every extend of the
/// application PCR.
///
/// Measurements are kept as a state (item name -> SHA-256) and brought up to date with ``reconcile(_:)``: each
/// item whose digest changed is extended and logged ("measure"), each item that went away is logged as "remove"
/// (e.g. a model version unloaded). The server reconciles at start, whenever model versions are retired and
/// before every quote, so the quoted PCR always covers what the evidence reports.
///
/// `@unchecked Sendable`: `log` and `measured` change only under `lock`, which also keeps extends and quotes in
/// the order the log records.
public final class TPMAttestor: @unchecked Sendable {
  public let settings: TPMAttestationConfig
  let device: TPMDevice
  let key: TPMAttestationKey
  public let ekPublic: TPMECCPublic
  public let ekCertificate: [UInt8]
  private let lock = NSLock()
  private var log: TPMEventLog
  private var measured: [String: String] = [:]

  /// Opens the TPM, resets the application PCR (when configured), creates the attestation key and reads the
  /// endorsement key and its certificate. Any TPM error is thrown: the server refuses to start with a TPM it was
  /// told to use but cannot.
  public init(settings: TPMAttestationConfig) throws(TPMError) {
    self.settings = settings
    let device = try TPMDevice(tcti: settings.tcti)
    self.device = device
    if settings.resetPCR { try device.pcrReset(settings.pcr) }
    log = TPMEventLog(pcr: settings.pcr, initial: try device.pcrRead(settings.pcr))
    key = try device.createAttestationKey()
    ekPublic = try device.readPublic(persistentHandle: settings.ekHandle)
    ekCertificate = Self.trimDER(try device.nvRead(index: settings.ekCertificateIndex))
  }

  /// Extends the PCR for every item of `current` whose digest differs from the last one measured, and for every
  /// item measured before that is no longer there.
  public func reconcile(_ current: [String: String]) throws(TPMError) {
    lock.lock()
    defer { lock.unlock() }
    for name in current.keys.sorted() {
      guard let digest = current[name], measured[name] != digest else { continue }
      try extend(TPMEventLog.Event(kind: "measure", name: Self.clean(name), digest: digest))
      measured[name] = digest
    }
    for name in measured.keys.sorted() where current[name] == nil {
      try extend(TPMEventLog.Event(kind: "remove", name: Self.clean(name), digest: ""))
      measured[name] = nil
    }
  }

  private func extend(_ event: TPMEventLog.Event) throws(TPMError) {
    try device.pcrExtend(
      settings.pcr, sha256: TPMEventLog.Event.extendValue(kind: event.kind, name: event.name, digest: event.digest))
    log.events.append(event)
  }

  /// The TPM part of an answer: a quote over the application PCR (and boot PCRs) for `nonce`, the PCR values, the
  /// event log as it stood when quoted, and the keys.
  public func evidence(nonce: [UInt8]) throws(TPMError) -> TPMEvidenceParts {
    lock.lock()
    defer { lock.unlock() }
    let pcrs = ([settings.pcr] + settings.bootPCRs).sorted()
    let quote = try device.quote(key: key, nonce: nonce, pcrs: pcrs)
    // Read after the quote, under the lock: Palisade's own extends cannot come between. (Boot PCRs do not change
    // after boot; if anything else extended a quoted PCR meanwhile, the caller's digest check fails, as it should.)
    var values: [Int: [UInt8]] = [:]
    for p in pcrs { values[p] = try device.pcrRead(p) }
    return TPMEvidenceParts(
      quote: quote, pcrValues: values, eventLog: log.json(), akPublic: key.publicArea.marshalled,
      ekPublic: ekPublic.marshalled, ekCertificate: ekCertificate, pcr: settings.pcr)
  }

  /// TPM2_ActivateCredential of a caller's challenge with the attestation key and the endorsement key.
  public func activate(credentialBlob: [UInt8], encryptedSecret: [UInt8]) throws(TPMError) -> [UInt8] {
    try device.activateCredential(
      key: key, ekHandle: settings.ekHandle, credentialBlob: credentialBlob, encryptedSecret: encryptedSecret)
  }

  /// Event names are one line (the extend value separates fields with newlines).
  static func clean(_ name: String) -> String {
    String(name.unicodeScalars.map { $0 == "\n" || $0 == "\r" ? "_" : Character($0) })
  }

  /// An EK certificate NV index may be larger than the certificate: keep the outer DER SEQUENCE only.
  static func trimDER(_ bytes: [UInt8]) -> [UInt8] {
    guard bytes.count > 4, bytes[0] == 0x30 else { return bytes }
    let first = Int(bytes[1])
    var length = 0
    var header = 2
    if first < 0x80 {
      length = first
    } else {
      let n = first & 0x7f
      guard (1...3).contains(n), bytes.count > 2 + n else { return bytes }
      for i in 0..<n { length = length << 8 | Int(bytes[2 + i]) }
      header = 2 + n
    }
    return header + length <= bytes.count ? Array(bytes.prefix(header + length)) : bytes
  }
}

/// What the TPM contributes to one Attest answer.
public struct TPMEvidenceParts: Sendable {
  public var quote: TPMQuote
  public var pcrValues: [Int: [UInt8]]
  public var eventLog: String
  public var akPublic: [UInt8]
  public var ekPublic: [UInt8]
  public var ekCertificate: [UInt8]
  public var pcr: Int
}
