import Crypto
import Foundation
#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// Something in a request that must not leave. `detail` says what and where, never the data itself.
public struct Finding: Sendable, Equatable {
  public var reason: BlockReason
  /// `url`, `header` or `body`.
  public var location: String
  public var detail: String
}

/// A canary token and where it came from.
public struct Canary: Sendable {
  public var bytes: [UInt8]
  /// "configured #2" or "bundle digits v3": safe to log.
  public var source: String
  public init(_ token: String, source: String) {
    bytes = Array(token.utf8)
    self.source = source
  }
}

/// Looks through a request's URL, headers and body for canaries, secrets, private keys, JWTs, high-entropy runs and
/// model weights: in the raw bytes, in their unescaped form (percent-encoding, JSON and backslash escapes, nested up
/// to ``maxUnescapeRounds`` times), and inside every base64 and hex run of those (decoded at every alignment, line
/// wrapping allowed). What it does not catch is listed in docs/egress.md: against a deliberately evasive sender the
/// allowlist and the byte budget are the control, not this.
public final class Inspector: Sendable {
  let settings: EgressConfig.Inspection
  let canaries: [Canary]
  let secretFingerprints: [[UInt8]: Int]
  let weights: WeightIndex?

  /// Escapes undone in turn (a percent-encoded percent-encoding, a JSON string in a URL parameter).
  static let maxUnescapeRounds = 2
  /// The shortest token hashed against the secret fingerprints, and so the shortest decoded run worth scanning.
  static let minSecretBytes = 6
  /// Longer tokens are not hashed (no secret is this long; bounds the work per token).
  static let maxSecretBytes = 4096
  /// Decoded bytes shorter than this cannot hold a PEM header, a DER key, a JWK or a JWT: only canaries and secrets
  /// are looked for in them.
  static let structuralMinBytes = 20
  /// The shortest decoded run worth scanning: the shortest canary, 6 bytes when secrets are configured, else
  /// `structuralMinBytes` (or the weight window, if smaller). Runs shorter than that (most words) are not decoded.
  let minDecodedBytes: Int
  /// Base64 runs this long decode to at least `minDecodedBytes`.
  let minBase64Chars: Int
  /// Hex runs this long decode to at least `minDecodedBytes`.
  let minHexDigits: Int
  /// Remainders of a base64 run after an inner `+ / - _` are decoded on their own up to this many characters.
  static let maxRemainderChars = 344

  public init(settings: EgressConfig.Inspection, canaries: [Canary], weights: WeightIndex?) {
    self.settings = settings
    self.canaries = canaries
    var fingerprints: [[UInt8]: Int] = [:]
    for (i, s) in settings.secretSHA256.enumerated() {
      var bytes: [UInt8] = []
      var chars = Array(s.utf8)[...]
      while chars.count >= 2, let hi = Self.hexValue(chars[chars.startIndex]),
        let lo = Self.hexValue(chars[chars.startIndex + 1])
      {
        bytes.append(hi << 4 | lo)
        chars = chars.dropFirst(2)
      }
      fingerprints[bytes] = i + 1
    }
    self.secretFingerprints = fingerprints
    self.weights = weights
    var least = min(Self.structuralMinBytes, weights?.window ?? Self.structuralMinBytes)
    if !fingerprints.isEmpty { least = min(least, Self.minSecretBytes) }
    for c in canaries where !c.bytes.isEmpty { least = min(least, c.bytes.count) }
    minDecodedBytes = least
    minBase64Chars = (least * 4 + 2) / 3
    minHexDigits = least * 2
  }

  /// The first finding in the request, or nil when it may leave.
  public func inspect(uri: String, headers: [(String, String)], body: [UInt8]) -> Finding? {
    if let f = scanText(Array(uri.utf8), location: "url") { return f }
    for (name, value) in headers {
      if let f = scanText(Array("\(name): \(value)".utf8), location: "header") { return f }
    }
    return scanText(body, location: "body")
  }

  /// Scans `bytes`, then its unescaped form while unescaping changes something (at most `maxUnescapeRounds`).
  func scanText(_ bytes: [UInt8], location: String) -> Finding? {
    var current = bytes
    var via: String?
    var round = 0
    while true {
      let f = current.withUnsafeBytes { scan($0, location: location, via: via, decodeRuns: true) }
      if let f { return f }
      // Two more readings of the same text: a hex dump's bytes (`xxd`, `hexdump -C`: offsets and an ASCII column
      // around the byte groups), and text whose characters are all below U+0100 read as Latin-1, one byte each
      // (binary data put in a JSON string: `\u00c4` or its UTF-8 form means the byte 0xC4).
      if let dump = Self.hexDumpBytes(current), dump.count >= minDecodedBytes,
        let f = dump.withUnsafeBytes({ scan($0, location: location, via: "hex dump", decodeRuns: false) })
      {
        return f
      }
      if let latin1 = Self.latin1Bytes(current),
        let f = latin1.withUnsafeBytes({ scan($0, location: location, via: "as Latin-1", decodeRuns: true) })
      {
        return f
      }
      guard round < Self.maxUnescapeRounds, let next = Self.unescape(current) else { return nil }
      current = next
      round += 1
      via = round == 1 ? "unescaped" : "unescaped \(round)x"
    }
  }

  /// Scans `raw`; `via` names the decoding these bytes came out of. Base64 and hex runs are decoded only one level
  /// deep (`decodeRuns` is false for their output).
  func scan(_ raw: UnsafeRawBufferPointer, location: String, via: String?, decodeRuns: Bool) -> Finding? {
    let suffix = via.map { " (\($0))" } ?? ""
    func finding(_ r: BlockReason, _ d: String) -> Finding {
      Finding(reason: r, location: location, detail: d + suffix)
    }
    for c in canaries where Self.find(c.bytes, in: raw, from: 0) != nil {
      return finding(.canary, "canary token (\(c.source))")
    }
    if settings.blockPrivateKeys {
      if Self.containsPEMPrivateKey(raw) { return finding(.privateKey, "PEM private key block") }
      if let kind = Self.derPrivateKey(in: raw) { return finding(.privateKey, "DER private key (\(kind))") }
      if Self.containsPrivateJWK(raw) { return finding(.privateKey, "JWK with a private \"d\" member") }
    }
    if settings.blockJWTs, Self.containsJWT(raw) { return finding(.jwt, "JWT-shaped token") }
    if !secretFingerprints.isEmpty, let n = matchSecret(raw) {
      return finding(.secret, "secret with configured fingerprint #\(n)")
    }
    if let w = weights, let source = w.firstMatch(in: raw) {
      return finding(.modelWeights, "model weights of \(source)")
    }
    if decodeRuns, let f = scanRuns(raw, location: location, via: via) { return f }
    return nil
  }

  // MARK: other readings

  /// The bytes of the hex-dump lines in `b` (`xxd`: `00000010: 4a5b 6c7d …  J[l}…`; `hexdump -C`:
  /// `00000010  4a 5b … 6c 7d  4e 00 …  |J[l}…|`), joined in order; nil when there are fewer than two such lines.
  /// A line is an offset of at least four hex digits followed by a colon or by spaces, then byte groups of an even
  /// number of digits separated by one space (`hexdump -C` also has one double space mid-line); two spaces end the
  /// groups (the ASCII column follows).
  static func hexDumpBytes(_ b: [UInt8]) -> [UInt8]? {
    let n = b.count
    var out: [UInt8] = []
    var lines = 0
    var i = 0
    while i < n {
      var end = i
      while end < n, !isLineBreak(b[end]) { end += 1 }
      defer { i = end + 1 }
      var j = i
      while j < end, isBlank(b[j]) { j += 1 }
      let offsetStart = j
      while j < end, hexValue(b[j]) != nil { j += 1 }
      guard j - offsetStart >= 4, j < end else { continue }
      let colon = b[j] == UInt8(ascii: ":")
      if colon { j += 1 }
      var spaces = 0
      while j < end, b[j] == 0x20 {
        j += 1
        spaces += 1
      }
      guard spaces >= 1, colon || spaces == 2 else { continue }
      var bytes: [UInt8] = []
      var doubleSpaceUsed = colon  // xxd has none
      while j + 1 < end, let hi = hexValue(b[j]), let lo = hexValue(b[j + 1]) {
        bytes.append(hi << 4 | lo)
        j += 2
        guard j < end, b[j] == 0x20 else { continue }
        var k = j
        while k < end, b[k] == 0x20 { k += 1 }
        if k - j == 1 {
          j = k
        } else if k - j == 2, !doubleSpaceUsed, k + 2 < end, hexValue(b[k]) != nil, hexValue(b[k + 1]) != nil,
          b[k + 2] == 0x20
        {
          doubleSpaceUsed = true
          j = k
        } else {
          break
        }
      }
      guard !bytes.isEmpty else { continue }
      out += bytes
      lines += 1
    }
    return lines >= 2 ? out : nil
  }

  /// `b` read as Latin-1 when it is UTF-8 whose characters are all below U+0100 and some above U+007F: each
  /// character one byte. Nil otherwise.
  static func latin1Bytes(_ b: [UInt8]) -> [UInt8]? {
    var out: [UInt8] = []
    var i = 0
    var wide = false
    while i < b.count {
      let c = b[i]
      if c < 0x80 {
        if wide { out.append(c) }
        i += 1
        continue
      }
      // Two-byte sequences C2 80 ... C3 BF are U+0080 ... U+00FF; any other non-ASCII byte: not this reading.
      guard c == 0xC2 || c == 0xC3, i + 1 < b.count, b[i + 1] & 0xC0 == 0x80 else { return nil }
      if !wide {
        wide = true
        out.reserveCapacity(b.count)
        out.append(contentsOf: b[0..<i])
      }
      out.append((c & 0x03) << 6 | (b[i + 1] & 0x3F))
      i += 2
    }
    return wide ? out : nil
  }

  // MARK: unescaping

  /// Undoes `%XX` (valid hex only), JSON escapes (`\uXXXX` with surrogate pairs, `\" \\ \/ \b \f \n \r \t`) and
  /// `\xXX`, byte by byte; anything that is not a valid escape is kept as it is. Nil when nothing changed.
  static func unescape(_ b: [UInt8]) -> [UInt8]? {
    let n = b.count
    guard b.contains(where: { $0 == 0x25 || $0 == 0x5C }) else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(n)
    var changed = false
    var i = 0
    func hex4(_ at: Int) -> UInt32? {
      guard at + 4 <= n, let a = hexValue(b[at]), let c = hexValue(b[at + 1]), let d = hexValue(b[at + 2]),
        let e = hexValue(b[at + 3])
      else { return nil }
      return UInt32(a) << 12 | UInt32(c) << 8 | UInt32(d) << 4 | UInt32(e)
    }
    while i < n {
      let c = b[i]
      if c == 0x25, i + 2 < n, let hi = hexValue(b[i + 1]), let lo = hexValue(b[i + 2]) {  // %XX
        out.append(hi << 4 | lo)
        i += 3
        changed = true
        continue
      }
      if c == 0x5C, i + 1 < n {  // backslash
        let e = b[i + 1]
        var simple: UInt8?
        switch e {
        case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "'"): simple = e
        case UInt8(ascii: "b"): simple = 0x08
        case UInt8(ascii: "f"): simple = 0x0C
        case UInt8(ascii: "n"): simple = 0x0A
        case UInt8(ascii: "r"): simple = 0x0D
        case UInt8(ascii: "t"): simple = 0x09
        case UInt8(ascii: "x"):
          if i + 3 < n, let hi = hexValue(b[i + 2]), let lo = hexValue(b[i + 3]) {
            out.append(hi << 4 | lo)
            i += 4
            changed = true
            continue
          }
        case UInt8(ascii: "u"):
          if var unit = hex4(i + 2) {
            var consumed = 6
            if (0xD800...0xDBFF).contains(unit), i + 7 < n, b[i + 6] == 0x5C, b[i + 7] == UInt8(ascii: "u"),
              let low = hex4(i + 8), (0xDC00...0xDFFF).contains(low)
            {
              unit = 0x10000 + ((unit - 0xD800) << 10) + (low - 0xDC00)
              consumed = 12
            }
            if let scalar = Unicode.Scalar(unit) {
              out.append(contentsOf: Array(String(Character(scalar)).utf8))
              i += consumed
              changed = true
              continue
            }
          }
        default: break
        }
        if let simple {
          out.append(simple)
          i += 2
          changed = true
          continue
        }
      }
      out.append(c)
      i += 1
    }
    return changed ? out : nil
  }

  // MARK: runs: base64 and hex, decoded and measured

  private static let base64Values: [Int8] = {
    var t = [Int8](repeating: -1, count: 256)
    for (i, c) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789".utf8.enumerated() {
      t[Int(c)] = Int8(truncatingIfNeeded: i)
    }
    t[Int(UInt8(ascii: "+"))] = 62
    t[Int(UInt8(ascii: "-"))] = 62
    t[Int(UInt8(ascii: "/"))] = 63
    t[Int(UInt8(ascii: "_"))] = 63
    return t
  }()

  static func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case 48...57: c - 48
    case 65...70: c - 55
    case 97...102: c - 87
    default: nil
    }
  }

  private static func isBlank(_ c: UInt8) -> Bool { c == 0x20 || c == 0x09 }
  private static func isLineBreak(_ c: UInt8) -> Bool { c == 0x0A || c == 0x0D }

  /// At `j` (a blank or line break inside a run): where the run continues when this is line wrapping (a line break
  /// with the blanks around it, as in PEM, MIME and indented YAML/JSON), or nil when the run ends here.
  private static func skipWrap(_ raw: UnsafeRawBufferPointer, _ j: Int) -> Int? {
    var k = j
    while k < raw.count, isBlank(raw[k]) { k += 1 }
    guard k < raw.count, isLineBreak(raw[k]) else { return nil }
    while k < raw.count, isBlank(raw[k]) || isLineBreak(raw[k]) { k += 1 }
    return k
  }

  private func scanRuns(_ raw: UnsafeRawBufferPointer, location: String, via: String?) -> Finding? {
    let table = Self.base64Values
    let n = raw.count
    let prefix = via.map { "\($0), " } ?? ""
    // One buffer for the run and one for its decoding: most runs are short words, and an allocation per run would
    // dominate.
    var values: [UInt8] = []
    values.reserveCapacity(256)
    var decoded: [UInt8] = []
    decoded.reserveCapacity(256)
    // Where a token may end and the next begin inside a run: around an inner + / - _ (left out of both), and at a
    // line break (a secret on a line of its own).
    var cuts: [(end: Int, start: Int)] = []
    func scanDecoded(_ label: String) -> Finding? {
      guard decoded.count >= minDecodedBytes else { return nil }
      return decoded.withUnsafeBytes { raw -> Finding? in
        if raw.count >= Self.structuralMinBytes {
          return scan(raw, location: location, via: prefix + label, decodeRuns: false)
        }
        // Too short for anything but a canary or a secret (most decoded runs are words): only those are looked for.
        for c in canaries where c.bytes.count <= raw.count && Self.find(c.bytes, in: raw, from: 0) != nil {
          return Finding(reason: .canary, location: location, detail: "canary token (\(c.source)) (\(prefix)\(label))")
        }
        if !secretFingerprints.isEmpty, let n = matchSecret(raw) {
          return Finding(
            reason: .secret, location: location, detail: "secret with configured fingerprint #\(n) (\(prefix)\(label))")
        }
        return nil
      }
    }
    var i = 0
    while i < n {
      guard table[Int(raw[i])] >= 0 else {
        i += 1
        continue
      }
      values.removeAll(keepingCapacity: true)
      cuts.removeAll(keepingCapacity: true)
      var j = i
      while j < n {
        let c = raw[j]
        let v = table[Int(c)]
        if v >= 0 {
          values.append(UInt8(truncatingIfNeeded: v))
          if v >= 62 { cuts.append((values.count - 1, values.count)) }
          j += 1
        } else if Self.isBlank(c) || Self.isLineBreak(c), let next = Self.skipWrap(raw, j) {
          j = next
          cuts.append((values.count, values.count))
        } else {
          break
        }
      }
      // Padding ends the run: what follows starts a new quantum (and `key=value` splits there).
      var end = j
      while end < n, raw[end] == UInt8(ascii: "=") { end += 1 }
      if values.count >= min(minBase64Chars, settings.highEntropy.minLength) {
        if settings.decodeBase64 {
          for align in 0..<4 where values.count - align >= minBase64Chars {
            Self.decodeBase64(values, from: align, to: values.count, into: &decoded)
            if let f = scanDecoded("base64-decoded") { return f }
          }
          // A secret's encoding after a prefix of base64 characters ("token_…", "/hook/…", the previous line):
          // decode from each cut to the end and each segment between cuts on its own, hashed whole (canaries and
          // keys are substrings, found above at one of the alignments anyway).
          if !secretFingerprints.isEmpty, !cuts.isEmpty {
            func hashed(_ s: Int, _ e: Int) -> Int? {
              guard e - s >= minBase64Chars, e - s <= Self.maxRemainderChars else { return nil }
              Self.decodeBase64(values, from: s, to: e, into: &decoded)
              return secretHash(decoded)
            }
            for k in 0...cuts.count {
              let start = k == 0 ? 0 : cuts[k - 1].start
              let segmentEnd = k < cuts.count ? cuts[k].end : values.count
              var hit: Int?
              if start > 0 || segmentEnd < values.count { hit = hashed(start, segmentEnd) }
              if hit == nil, start > 0, segmentEnd < values.count { hit = hashed(start, values.count) }
              if let hit {
                return Finding(
                  reason: .secret, location: location,
                  detail: "secret with configured fingerprint #\(hit) (\(prefix)base64-decoded)")
              }
            }
          }
        }
        if settings.highEntropy.enabled, values.count >= settings.highEntropy.minLength {
          let bits = Self.entropy(values, symbols: 64)
          if bits >= settings.highEntropy.minBitsPerChar {
            return Finding(
              reason: .highEntropy, location: location,
              detail:
                "base64-like run of \(values.count) characters at \(String(format: "%.2f", bits)) bits per character")
          }
        }
      }
      i = max(end, j + 1)
    }
    guard settings.decodeHex || settings.highEntropy.enabled else { return nil }
    i = 0
    while i < n {
      guard Self.hexValue(raw[i]) != nil else {
        i += 1
        continue
      }
      values.removeAll(keepingCapacity: true)
      var j = i
      // Hex digits since the last separator: `de:ad:be:ef` and `de ad be ef` (openssl and hexdump styles) are one
      // run when every group is whole bytes.
      var group = 0
      while j < n {
        let c = raw[j]
        if let v = Self.hexValue(c) {
          values.append(v)
          group += 1
          j += 1
        } else if Self.isBlank(c) || Self.isLineBreak(c), let next = Self.skipWrap(raw, j) {
          j = next
          group = 0
        } else if c == UInt8(ascii: ":") || c == 0x20, group >= 2, group % 2 == 0, j + 1 < n,
          Self.hexValue(raw[j + 1]) != nil
        {
          j += 1
          group = 0
        } else if c == UInt8(ascii: ":"), group >= 2, group % 2 == 0, j + 1 < n, let next = Self.skipWrap(raw, j + 1) {
          j = next  // openssl ends each line with a colon
          group = 0
        } else {
          break
        }
      }
      if values.count >= min(minHexDigits, settings.highEntropy.minLength) {
        if settings.decodeHex {
          for align in 0..<2 where values.count - align >= minHexDigits {
            decoded.removeAll(keepingCapacity: true)
            var k = align
            while k + 1 < values.count {
              decoded.append(values[k] << 4 | values[k + 1])
              k += 2
            }
            if let f = scanDecoded("hex-decoded") { return f }
          }
        }
        // Hex carries 4 bits per character where base64 carries 6: the threshold moves down by 2.
        if settings.highEntropy.enabled, values.count >= settings.highEntropy.minLength {
          let bits = Self.entropy(values, symbols: 16)
          if bits >= settings.highEntropy.minBitsPerChar - 2 {
            return Finding(
              reason: .highEntropy, location: location,
              detail: "hex run of \(values.count) characters at \(String(format: "%.2f", bits)) bits per character")
          }
        }
      }
      i = j + 1
    }
    return nil
  }

  /// Decodes base64 values `start..<end` into `out`, the final partial quantum included (2 characters give 1 byte,
  /// 3 give 2, with or without padding; a lone last character carries no whole byte).
  static func decodeBase64(_ values: [UInt8], from start: Int, to end: Int, into out: inout [UInt8]) {
    out.removeAll(keepingCapacity: true)
    guard start < end, end <= values.count else { return }
    var k = start
    while k + 3 < end {
      let v = UInt32(values[k]) << 18 | UInt32(values[k + 1]) << 12 | UInt32(values[k + 2]) << 6 | UInt32(values[k + 3])
      out.append(UInt8(truncatingIfNeeded: v >> 16))
      out.append(UInt8(truncatingIfNeeded: v >> 8))
      out.append(UInt8(truncatingIfNeeded: v))
      k += 4
    }
    let rest = end - k
    if rest >= 2 {
      var v = UInt32(values[k]) << 18 | UInt32(values[k + 1]) << 12
      if rest == 3 { v |= UInt32(values[k + 2]) << 6 }
      out.append(UInt8(truncatingIfNeeded: v >> 16))
      if rest == 3 { out.append(UInt8(truncatingIfNeeded: v >> 8)) }
    }
  }

  /// Convenience for tests and tools: the bytes of `values` from `start`.
  static func decodeBase64(_ values: [UInt8], from start: Int) -> [UInt8] {
    var out: [UInt8] = []
    decodeBase64(values, from: start, to: values.count, into: &out)
    return out
  }

  static func entropy(_ symbols: [UInt8], symbols alphabet: Int) -> Double {
    var counts = [Int](repeating: 0, count: alphabet)
    for s in symbols { counts[Int(s)] += 1 }
    let total = Double(symbols.count)
    var h = 0.0
    for c in counts where c > 0 {
      let p = Double(c) / total
      h -= p * log2(p)
    }
    return h
  }

  // MARK: keys and tokens

  static func find(_ needle: [UInt8], in haystack: UnsafeRawBufferPointer, from: Int) -> Int? {
    guard !needle.isEmpty, from >= 0, haystack.count - from >= needle.count, let base = haystack.baseAddress else {
      return nil
    }
    // memchr for the first byte, then memcmp (Glibc's memmem is a GNU extension Swift does not import).
    return needle.withUnsafeBytes { n -> Int? in
      guard let needleBase = n.baseAddress else { return nil }
      let first = Int32(n[0])
      var at = from
      let last = haystack.count - n.count
      while at <= last {
        guard let p = memchr(base + at, first, last - at + 1) else { return nil }
        let offset = base.distance(to: UnsafeRawPointer(p))
        if memcmp(base + offset, needleBase, n.count) == 0 { return offset }
        at = offset + 1
      }
      return nil
    }
  }

  private static let pemBegin = Array("-----BEGIN ".utf8)
  private static let pemKey = Array("PRIVATE KEY-----".utf8)

  /// `-----BEGIN … PRIVATE KEY-----` (RSA, EC, OPENSSH, ENCRYPTED, PKCS#8).
  static func containsPEMPrivateKey(_ raw: UnsafeRawBufferPointer) -> Bool {
    var from = 0
    while let at = find(pemBegin, in: raw, from: from) {
      let end = min(raw.count, at + pemBegin.count + 40)
      let slice = UnsafeRawBufferPointer(rebasing: raw[(at + pemBegin.count)..<end])
      if find(pemKey, in: slice, from: 0) != nil { return true }
      from = at + 1
    }
    return false
  }

  /// A DER length at `i` (definite, minimal, at most 3 length bytes); advances `i` past it.
  private static func derLength(_ raw: UnsafeRawBufferPointer, _ i: inout Int) -> Int? {
    guard i < raw.count else { return nil }
    let first = raw[i]
    i += 1
    if first < 0x80 { return Int(first) }
    let count = Int(first & 0x7F)
    guard (1...3).contains(count), i + count <= raw.count, raw[i] != 0 else { return nil }
    var v = 0
    for _ in 0..<count {
      v = v << 8 | Int(raw[i])
      i += 1
    }
    return count == 1 && v < 0x80 ? nil : v
  }

  private static let pkcs5Prefix: [UInt8] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x05]  // 1.2.840.113549.1.5
  private static let pkcs12PBEPrefix: [UInt8] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x0C, 0x01]
  private static let pkcs7Prefix: [UInt8] = [0x2A, 0x86, 0x48, 0x86, 0xF7, 0x0D, 0x01, 0x07]  // 1.2.840.113549.1.7

  private static func hasBytes(_ raw: UnsafeRawBufferPointer, at i: Int, _ expected: [UInt8]) -> Bool {
    guard i >= 0, i + expected.count <= raw.count else { return false }
    for (k, b) in expected.enumerated() where raw[i + k] != b { return false }
    return true
  }

  /// The kind of the first unarmoured DER private key in `raw` (raw binary, or what a base64/hex run decoded to):
  /// PKCS#8 (`SEQUENCE { INTEGER 0|1, SEQUENCE { OID … }, OCTET STRING }`), encrypted PKCS#8 (PBES1/PBES2/PKCS#12
  /// PBE), SEC1 EC (`SEQUENCE { INTEGER 1, OCTET STRING (16…72 bytes) … }`), PKCS#1 RSA (`SEQUENCE { INTEGER 0,
  /// INTEGER (≥ 512-bit modulus), INTEGER … }`) or a PKCS#12 store. Certificates, public keys and signatures have
  /// other shapes.
  static func derPrivateKey(in raw: UnsafeRawBufferPointer) -> String? {
    let n = raw.count
    guard n >= 32, let base = raw.baseAddress else { return nil }
    var at = 0
    while at + 8 <= n {
      guard let p = memchr(base + at, 0x30, n - at - 7) else { return nil }
      let off = base.distance(to: UnsafeRawPointer(p))
      at = off + 1
      var i = off + 1
      guard let outer = derLength(raw, &i), outer >= 30, i + 4 <= n else { continue }
      let sequenceEnd = i + outer
      if raw[i] == 0x02, raw[i + 1] == 0x01 {
        let version = raw[i + 2]
        i += 3
        guard i + 2 <= n else { continue }
        let tag = raw[i]
        i += 1
        switch (version, tag) {
        case (0, 0x30), (1, 0x30):
          guard let algLen = derLength(raw, &i), algLen >= 5, i < n, raw[i] == 0x06 else { continue }
          let after = i + algLen
          if after < n, raw[after] == 0x04 { return "PKCS#8" }
        case (0, 0x02):
          guard let modulus = derLength(raw, &i), modulus >= 64 else { continue }
          let after = i + modulus
          if after < n, raw[after] == 0x02 { return "PKCS#1 RSA" }
        case (1, 0x04):
          guard let keyLen = derLength(raw, &i), (16...72).contains(keyLen) else { continue }
          let after = i + keyLen
          // The scalar is followed by [0] parameters, [1] public key, or the end of the structure (or the buffer).
          if after <= n, after == sequenceEnd || after == n || raw[after] == 0xA0 || raw[after] == 0xA1 {
            return "SEC1 EC"
          }
        case (3, 0x30):
          guard derLength(raw, &i) != nil, i + 2 <= n, raw[i] == 0x06, raw[i + 1] == 0x09 else { continue }
          if hasBytes(raw, at: i + 2, pkcs7Prefix) { return "PKCS#12" }
        default: continue
        }
      } else if raw[i] == 0x30 {
        // EncryptedPrivateKeyInfo: SEQUENCE { SEQUENCE { OID pbe… }, OCTET STRING }.
        i += 1
        guard derLength(raw, &i) != nil, i + 2 <= n, raw[i] == 0x06 else { continue }
        let oidLen = Int(raw[i + 1])
        if (oidLen == 9 && hasBytes(raw, at: i + 2, pkcs5Prefix))
          || (oidLen == 10 && hasBytes(raw, at: i + 2, pkcs12PBEPrefix))
        {
          return "encrypted PKCS#8"
        }
      }
    }
    return nil
  }

  private static let ktyMember = Array("\"kty\"".utf8)
  private static let dMember = Array("\"d\"".utf8)

  /// A JSON Web Key with a private part: an object holding `"kty"` and a `"d"` member whose value is a base64url
  /// string (RSA, EC and OKP private keys all carry `d`).
  static func containsPrivateJWK(_ raw: UnsafeRawBufferPointer) -> Bool {
    let n = raw.count
    var from = 0
    while let k = find(ktyMember, in: raw, from: from) {
      // The enclosing object, approximately: the nearest braces around "kty" (JWK members are flat).
      var s = k
      while s > 0, raw[s] != UInt8(ascii: "{"), k - s < 16_384 { s -= 1 }
      var e = k
      while e < n, raw[e] != UInt8(ascii: "}"), e - k < 65_536 { e += 1 }
      // A later "kty" inside this object finds no other "d": go on after it, so that a body of many "kty" costs
      // linear time, not a 64 KiB scan per occurrence.
      from = max(k + 1, e)
      let object = UnsafeRawBufferPointer(rebasing: raw[s..<e])
      var at = 0
      while let d = find(dMember, in: object, from: at) {
        at = d + 1
        var i = d + dMember.count
        while i < object.count, isBlank(object[i]) || isLineBreak(object[i]) { i += 1 }
        guard i < object.count, object[i] == UInt8(ascii: ":") else { continue }
        i += 1
        while i < object.count, isBlank(object[i]) || isLineBreak(object[i]) { i += 1 }
        guard i < object.count, object[i] == UInt8(ascii: "\"") else { continue }
        i += 1
        var length = 0
        while i + length < object.count, isBase64URL(object[i + length]) { length += 1 }
        if length >= 16 { return true }
      }
    }
    return false
  }

  private static func isBase64URL(_ c: UInt8) -> Bool {
    (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 45 || c == 95
  }

  /// A JWS compact serialisation: `eyJ…` (a JSON header), a payload segment, and a signature segment.
  static func containsJWT(_ raw: UnsafeRawBufferPointer) -> Bool {
    let marker = Array("eyJ".utf8)
    var from = 0
    while let at = find(marker, in: raw, from: from) {
      var i = at
      var segments = [0]
      var secondSegment: Int?
      while i < raw.count {
        let c = raw[i]
        if isBase64URL(c) {
          segments[segments.count - 1] += 1
        } else if c == UInt8(ascii: "."), segments.count < 3 {
          segments.append(0)
          if secondSegment == nil { secondSegment = i + 1 }
        } else {
          break
        }
        i += 1
      }
      if segments.count == 3, segments[0] >= 10, segments[1] >= 8 { return true }
      // A token starting later in this header segment would have a shorter header and the same other segments:
      // no better. Go on from the second segment (a token may start there), or after the run: linear time, where
      // restarting one byte later made a body of repeated "eyJ" quadratic.
      from = max(at + 1, secondSegment ?? i)
    }
    return false
  }

  // MARK: secrets

  /// Whitespace, controls, quotes and `,;&<>()[]{}`: what ends a token in text, JSON, forms and headers.
  private static let tokenDelimiters: [Bool] = {
    var t = [Bool](repeating: false, count: 256)
    for c in 0...0x20 { t[c] = true }
    t[0x7F] = true
    for c in "\"'`,;&<>()[]{}".utf8 { t[Int(c)] = true }
    return t
  }()

  /// Also `/ ? # = : + @ | \ !`: what separates the parts of a URL, a `key=value` pair or a header value.
  private static let partDelimiters: [Bool] = {
    var t = tokenDelimiters
    for c in "/?#=:+@|\\!".utf8 { t[Int(c)] = true }
    return t
  }()

  private func secretHash(_ bytes: [UInt8]) -> Int? {
    guard bytes.count >= Self.minSecretBytes, bytes.count <= Self.maxSecretBytes else { return nil }
    return secretFingerprints[Array(SHA256.hash(data: bytes))]
  }

  /// Hashes, for every token (delimited by whitespace, quotes and `,;&<>()[]{}`): the token, the value after its
  /// first `=` or `:`, and each of its parts between URL delimiters (`/ ? # = : + @ | \ !`), so that
  /// `?key=SECRET`, `/hook/SECRET` and `Bearer SECRET` all match. Returns the matching fingerprint's number.
  /// Punctuation trimmed from both ends of a token before its fingerprint is checked a second time.
  private static let trimmable: [Bool] = {
    var t = [Bool](repeating: false, count: 256)
    for c in ".*~$%^-!?_+#|".utf8 { t[Int(c)] = true }
    return t
  }()

  private func matchSecret(_ raw: UnsafeRawBufferPointer) -> Int? {
    let n = raw.count
    let token = Self.tokenDelimiters
    let part = Self.partDelimiters
    func exact(_ start: Int, _ end: Int) -> Int? {
      guard end - start >= Self.minSecretBytes, end - start <= Self.maxSecretBytes else { return nil }
      let digest = SHA256.hash(data: UnsafeRawBufferPointer(rebasing: raw[start..<end]))
      return secretFingerprints[Array(digest)]
    }
    // As it stands, and without the punctuation prose and markup put around a word ("the key is hunter2.",
    // "*hunter2*"), which the delimiters above do not cut off.
    func check(_ start: Int, _ end: Int) -> Int? {
      if let hit = exact(start, end) { return hit }
      var s = start
      var e = end
      while s < e, Self.trimmable[Int(raw[s])] { s += 1 }
      while e > s, Self.trimmable[Int(raw[e - 1])] { e -= 1 }
      return s != start || e != end ? exact(s, e) : nil
    }
    var i = 0
    while i < n {
      if token[Int(raw[i])] {
        i += 1
        continue
      }
      var j = i
      var split: Int?
      var partStart = i
      while j < n, !token[Int(raw[j])] {
        let c = raw[j]
        if part[Int(c)] {
          if split == nil, c == UInt8(ascii: "=") || c == UInt8(ascii: ":") { split = j }
          if let hit = check(partStart, j) { return hit }
          partStart = j + 1
        }
        j += 1
      }
      if partStart > i, let hit = check(partStart, j) { return hit }
      if let hit = check(i, j) { return hit }
      if let s = split, s + 1 != partStart, let hit = check(s + 1, j) { return hit }
      i = j
    }
    return nil
  }
}
