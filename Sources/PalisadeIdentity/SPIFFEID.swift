/// A SPIFFE ID (`spiffe://<trust-domain>/<path>`), parsed strictly per the SPIFFE-ID specification.
///
/// The trust domain is lowercase letters, digits, `.`, `-` and `_`; path segments are non-empty, are not `.` or
/// `..`, and use letters, digits, `.`, `-` and `_`. No port, user info, query or fragment; at most 2048 bytes.
public struct SPIFFEID: Sendable, Hashable, CustomStringConvertible {
  /// The trust domain, e.g. `example.org`.
  public let trustDomain: String
  /// The path including its leading `/`, or empty.
  public let path: String

  /// The whole ID, e.g. `spiffe://example.org/ns/prod/sa/caller`.
  public var description: String { "spiffe://\(trustDomain)\(path)" }

  /// Why a string is not a SPIFFE ID.
  public enum ParseError: Error, Equatable, Sendable {
    case notSPIFFEScheme
    case tooLong
    case emptyTrustDomain
    case invalidTrustDomainCharacter
    case emptyPathSegment
    case dotPathSegment
    case invalidPathCharacter
    case trailingSlash
  }

  /// Parses `string`, throwing the first rule it breaks.
  public init(parsing string: String) throws(ParseError) {
    let prefix = "spiffe://"
    guard string.hasPrefix(prefix) else { throw .notSPIFFEScheme }
    guard string.utf8.count <= 2048 else { throw .tooLong }
    let rest = string.utf8.dropFirst(prefix.utf8.count)
    let slash = rest.firstIndex(of: UInt8(ascii: "/")) ?? rest.endIndex
    let domain = rest[rest.startIndex..<slash]
    guard !domain.isEmpty else { throw .emptyTrustDomain }
    for byte in domain {
      switch byte {
      case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
        UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"):
        continue
      default: throw .invalidTrustDomainCharacter
      }
    }
    let path = rest[slash...]
    if !path.isEmpty {
      guard path.last != UInt8(ascii: "/") else { throw .trailingSlash }
      for segment in path.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false) {
        guard !segment.isEmpty else { throw .emptyPathSegment }
        guard !segment.elementsEqual(".".utf8), !segment.elementsEqual("..".utf8) else { throw .dotPathSegment }
        for byte in segment {
          switch byte {
          case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
            UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"):
            continue
          default: throw .invalidPathCharacter
          }
        }
      }
    }
    self.trustDomain = String(decoding: domain, as: UTF8.self)
    self.path = String(decoding: path, as: UTF8.self)
  }

  /// True when this ID equals `prefix` or lies below it by whole path segments
  /// (`spiffe://td/ns/prod` covers `spiffe://td/ns/prod/sa/x` but not `spiffe://td/ns/production`).
  public func isWithin(_ prefix: SPIFFEID) -> Bool {
    guard trustDomain == prefix.trustDomain else { return false }
    if prefix.path.isEmpty || path == prefix.path { return true }
    return path.hasPrefix(prefix.path + "/")
  }
}
