#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

/// RFC 3339 UTC times (`2026-12-05T20:21:56Z`, or with milliseconds `...56.123Z`) built from `gmtime_r`.
///
/// `ISO8601DateFormatter` costs tens of microseconds to create; paths an attacker can drive (a refused call's
/// message, a log line) format times with this instead.
public enum RFC3339 {
  /// Seconds since 1970 (UTC), as `ISO8601DateFormatter` writes them: whole seconds (rounded down) by default,
  /// or rounded to the millisecond as with its `.withFractionalSeconds`.
  public static func string(secondsSince1970: Double, milliseconds: Bool = false) -> String {
    guard secondsSince1970.isFinite else { return "invalid-time" }
    guard milliseconds else {
      guard let whole = Int(exactly: secondsSince1970.rounded(.down)) else { return "invalid-time" }
      return format(seconds: whole, milliseconds: nil)
    }
    guard let total = Int(exactly: (secondsSince1970 * 1000).rounded()) else { return "invalid-time" }
    let (seconds, ms) = (total.quotientAndRemainder(dividingBy: 1000))
    return ms < 0 ? format(seconds: seconds - 1, milliseconds: ms + 1000) : format(seconds: seconds, milliseconds: ms)
  }

  /// The system clock now, with milliseconds.
  public static func now() -> String {
    var now = timespec()
    clock_gettime(CLOCK_REALTIME, &now)
    return format(seconds: Int(now.tv_sec), milliseconds: Int(now.tv_nsec) / 1_000_000)
  }

  static func format(seconds: Int, milliseconds: Int?) -> String {
    var t = time_t(seconds)
    var parts = tm()
    guard gmtime_r(&t, &parts) != nil else { return "invalid-time" }
    var out: [UInt8] = []
    out.reserveCapacity(24)
    // At least `width` digits, all of them for a larger value (a year after 9999 is not cut to its last four).
    func digits(_ value: Int, _ width: Int) {
      var v = max(0, value)
      var divisor = 1
      for _ in 1..<width { divisor *= 10 }
      while divisor <= v / 10 { divisor *= 10 }
      while divisor > 0 {
        out.append(UInt8(ascii: "0") + UInt8(truncatingIfNeeded: (v / divisor) % 10))
        v %= divisor
        divisor /= 10
      }
    }
    digits(Int(parts.tm_year) + 1900, 4)
    out.append(UInt8(ascii: "-"))
    digits(Int(parts.tm_mon) + 1, 2)
    out.append(UInt8(ascii: "-"))
    digits(Int(parts.tm_mday), 2)
    out.append(UInt8(ascii: "T"))
    digits(Int(parts.tm_hour), 2)
    out.append(UInt8(ascii: ":"))
    digits(Int(parts.tm_min), 2)
    out.append(UInt8(ascii: ":"))
    digits(Int(parts.tm_sec), 2)
    if let milliseconds {
      out.append(UInt8(ascii: "."))
      digits(milliseconds, 3)
    }
    out.append(UInt8(ascii: "Z"))
    return String(decoding: out, as: UTF8.self)
  }
}
