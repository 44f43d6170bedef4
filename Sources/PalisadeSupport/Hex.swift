/// Lower-case hex of `bytes`: the one spelling of digests in config, audit records, evidence and integrity checks.
public func hexString(_ bytes: some Sequence<UInt8>) -> String {
  var out = ""
  for b in bytes {
    if b < 16 { out += "0" }
    out += String(b, radix: 16)
  }
  return out
}
