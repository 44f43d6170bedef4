public import PalisadeYAML

/// `attestation.tpm`: root the attestation evidence in a TPM 2.0 (docs/attestation.md). Absent (the default): no
/// TPM is used, and the evidence says it is software-signed (`palisade.evidence_root: software-key`).
public struct TPMAttestationConfig: Sendable, Equatable {
  /// The TCTI (TSS transport): the kernel's resource manager in production, `swtpm:host=…,port=…` for swtpm.
  public var tcti = "device:/dev/tpmrm0"
  /// The application PCR Palisade extends with its measurements (16 and 23 are resettable at locality 0 and left
  /// free by PC-client firmware; 23 is the usual application PCR).
  public var pcr = 23
  /// Reset the PCR at start (TPM2_PCR_Reset), so its value is exactly the replay of this process's event log. Off
  /// for a PCR the platform does not let locality 0 reset; the log then starts from the value found.
  public var resetPCR = true
  /// Platform PCRs (SHA-256 bank) quoted beside the application PCR, e.g. [0, 2, 4, 7] for firmware, boot loader and
  /// Secure Boot state; their values are reported for the caller to compare with its own reference values.
  public var bootPCRs: [Int] = []
  /// Where the endorsement key (ECC P-256 or P-384) is persisted, and the NV index of its certificate. The default
  /// pair is the TCG high-range ECC P-384 EK (what swtpm_setup --create-ek-cert makes); the TCG P-256 EK is at
  /// 0x81010002 with its certificate at 0x01c0000a.
  public var ekHandle: UInt32 = 0x8101_0016
  public var ekCertificateIndex: UInt32 = 0x01C0_0016

  public init() {}

  /// Reads the `attestation.tpm` mapping.
  public init(yaml m: YAMLMap) throws(YAMLError) {
    tcti = try m.string("tcti") ?? tcti
    guard !tcti.isEmpty else { throw m.error("tcti", "must not be empty") }
    pcr = try m.int("pcr", in: 0...23) ?? pcr
    resetPCR = try m.bool("reset_pcr") ?? resetPCR
    if let list = try m.strings("boot_pcrs") {
      bootPCRs = []
      for item in list {
        guard let v = Int(item), (0...23).contains(v), v != pcr else {
          throw m.error("boot_pcrs", "must list PCR indices 0–23 other than the application PCR, got '\(item)'")
        }
        bootPCRs.append(v)
      }
    }
    ekHandle = try Self.handle(m, "ek_handle") ?? ekHandle
    ekCertificateIndex = try Self.handle(m, "ek_certificate_index") ?? ekCertificateIndex
    try m.finish()
  }

  /// A TPM handle written in hex (`0x81010016`).
  static func handle(_ m: YAMLMap, _ key: String) throws(YAMLError) -> UInt32? {
    guard let text = try m.string(key) else { return nil }
    let digits = text.hasPrefix("0x") || text.hasPrefix("0X") ? String(text.dropFirst(2)) : text
    guard !digits.isEmpty, digits.count <= 8, let v = UInt32(digits, radix: 16) else {
      throw m.error(key, "must be a TPM handle in hex (0x81010016), got '\(text)'")
    }
    return v
  }
}
