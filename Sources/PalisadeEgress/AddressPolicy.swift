#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif
public import NIOCore

/// What kind of address an IP is, for SSRF and DNS-rebinding defence.
public enum AddressClass: String, Sendable, Equatable {
  case global
  /// 10/8, 172.16/12, 192.168/16, 100.64/10 (CGNAT), fc00::/7 (ULA), and the other non-global ranges.
  case privateUse = "private"
  case loopback
  case linkLocal = "link_local"
  case multicast
  case unspecified
  /// Cloud instance metadata and credential endpoints (169.254.169.254, 169.254.170.2 and .23, 100.100.100.200,
  /// fd00:ec2::254 and ::23), also when embedded in an IPv6 address: never allowed.
  case metadata

  /// Classifies an IPv4 address given as 4 bytes.
  public static func of(ipv4 b: [UInt8]) -> AddressClass {
    guard b.count == 4 else { return .unspecified }
    let a = b[0]
    // AWS/GCP/Azure/OCI instance metadata, ECS task credentials, EKS pod identity, Alibaba Cloud metadata.
    if b == [169, 254, 169, 254] || b == [169, 254, 170, 2] || b == [169, 254, 170, 23] || b == [100, 100, 100, 200] {
      return .metadata
    }
    if a == 0 { return .unspecified }
    if a == 127 { return .loopback }
    if a == 169 && b[1] == 254 { return .linkLocal }
    if a >= 224 { return a < 240 ? .multicast : .privateUse }  // 240/4 reserved, 255.255.255.255 broadcast
    if a == 10 || (a == 172 && (16...31).contains(b[1])) || (a == 192 && b[1] == 168) { return .privateUse }
    if a == 100 && (64...127).contains(b[1]) { return .privateUse }  // CGNAT
    if a == 192 && b[1] == 0 && (b[2] == 0 || b[2] == 2) { return .privateUse }  // IETF, TEST-NET-1
    if a == 192 && b[1] == 88 && b[2] == 99 { return .privateUse }  // deprecated 6to4 relay anycast
    if a == 198 && (b[1] == 18 || b[1] == 19) { return .privateUse }  // benchmarking
    if (a == 198 && b[1] == 51 && b[2] == 100) || (a == 203 && b[1] == 0 && b[2] == 113) { return .privateUse }
    return .global
  }

  /// Classifies an IPv6 address given as 16 bytes. An IPv4 address embedded by any of the transition mechanisms
  /// (IPv4-compatible `::a.b.c.d`, IPv4-mapped `::ffff:a.b.c.d`, IPv4-translated `::ffff:0:a.b.c.d`, NAT64
  /// `64:ff9b::/96` and the local-use `64:ff9b:1::/48`, 6to4 `2002::/16`, Teredo `2001::/32`, ISATAP interface
  /// identifiers) is classified as that IPv4 address, so `::169.254.169.254` is the metadata address, and
  /// `2002:0a00:0001::` is private.
  public static func of(ipv6 b: [UInt8]) -> AddressClass {
    guard b.count == 16 else { return .unspecified }
    let metadata6: [[UInt8]] = [
      [0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54],
      [0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x23],
    ]
    if metadata6.contains(b) { return .metadata }
    if b.allSatisfy({ $0 == 0 }) { return .unspecified }
    if b[0..<15].allSatisfy({ $0 == 0 }) && b[15] == 1 { return .loopback }
    func v4(_ range: Range<Int>) -> AddressClass { of(ipv4: Array(b[range])) }
    /// The embedded address's class when it is not global, else `otherwise`.
    func embedded(_ inner: AddressClass, otherwise: AddressClass) -> AddressClass {
      inner == .global ? otherwise : (inner == .unspecified ? .privateUse : inner)
    }
    let zero8 = b[0..<8].allSatisfy { $0 == 0 }
    if zero8 && b[8] == 0 && b[9] == 0 {
      if b[10] == 0xff && b[11] == 0xff { return v4(12..<16) }  // IPv4-mapped: the kernel sends IPv4
      // IPv4-compatible (deprecated, ::/96): never a real destination, but never less than its IPv4 part.
      if b[10] == 0 && b[11] == 0 { return embedded(v4(12..<16), otherwise: .privateUse) }
    }
    if zero8 && b[8] == 0xff && b[9] == 0xff && b[10] == 0 && b[11] == 0 {  // IPv4-translated (SIIT)
      return embedded(v4(12..<16), otherwise: .privateUse)
    }
    if b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b {
      // Well-known NAT64 prefix: the translator connects to the IPv4 address.
      if b[4..<12].allSatisfy({ $0 == 0 }) { return v4(12..<16) }
      // Local-use NAT64 (64:ff9b:1::/48): the operator picks the embedding; check the /48 and /96 positions.
      if b[4] == 0 && b[5] == 1 {
        let at48 = of(ipv4: [b[6], b[7], b[9], b[10]])
        let at96 = v4(12..<16)
        if at48 == .metadata || at96 == .metadata { return .metadata }
        return .privateUse
      }
    }
    if b[0] == 0x20 && b[1] == 0x02 { return embedded(v4(2..<6), otherwise: .global) }  // 6to4
    if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0 {  // Teredo: server, then client bits inverted
      let server = v4(4..<8)
      let client = of(ipv4: b[12..<16].map { ~$0 })
      if server == .metadata || client == .metadata { return .metadata }
      return .privateUse
    }
    // ISATAP interface identifier (::0:5efe:a.b.c.d or ::200:5efe:a.b.c.d) under any prefix.
    if (b[8] == 0 || b[8] == 0x02) && b[9] == 0 && b[10] == 0x5e && b[11] == 0xfe, v4(12..<16) == .metadata {
      return .metadata
    }
    if b[0] == 0xff { return .multicast }
    if b[0] == 0xfe && (b[1] & 0xc0) == 0x80 { return .linkLocal }
    if b[0] == 0xfe && (b[1] & 0xc0) == 0xc0 { return .privateUse }  // site-local (deprecated)
    if (b[0] & 0xfe) == 0xfc { return .privateUse }  // ULA
    if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8 { return .privateUse }  // documentation
    if b[0] == 0x3f && b[1] == 0xff && (b[2] & 0xf0) == 0 { return .privateUse }  // documentation (3fff::/20)
    if b[0] == 0x01 && b[1] == 0x00 && b[2..<8].allSatisfy({ $0 == 0 }) { return .privateUse }  // discard
    if zero8 { return .privateUse }  // the rest of ::/64 is reserved
    return .global
  }

  /// Classifies a NIO socket address (Unix sockets are not network destinations).
  public static func of(_ address: SocketAddress) -> AddressClass {
    switch address {
    case .v4(let a):
      let raw = a.address.sin_addr.s_addr  // network byte order
      return of(ipv4: withUnsafeBytes(of: raw) { Array($0) })
    case .v6(let a):
      var addr = a.address.sin6_addr
      return of(ipv6: withUnsafeBytes(of: &addr) { Array($0) })
    case .unixDomainSocket:
      return .unspecified
    }
  }
}

/// Resolves names with the system resolver, once; the sidecar connects to the address it checked, so a second
/// lookup (DNS rebinding) never happens.
enum Resolver {
  enum Failure: Error, CustomStringConvertible {
    case lookup(String)
    case noAddresses
    var description: String {
      switch self {
      case .lookup(let m): "name resolution failed: \(m)"
      case .noAddresses: "name resolved to no addresses"
      }
    }
  }

  /// Every address of `host` (an IP literal is returned as is). Blocking: call off the event loops.
  static func resolve(host: String, port: Int) throws -> [SocketAddress] {
    var hints = addrinfo()
    hints.ai_family = AF_UNSPEC
    #if canImport(Glibc)
      hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    #else
      hints.ai_socktype = SOCK_STREAM
    #endif
    hints.ai_protocol = Int32(IPPROTO_TCP)
    var result: UnsafeMutablePointer<addrinfo>?
    let rc = getaddrinfo(host, String(port), &hints, &result)
    guard rc == 0, let first = result else { throw Failure.lookup(String(cString: gai_strerror(rc))) }
    defer { freeaddrinfo(first) }
    var out: [SocketAddress] = []
    var cursor: UnsafeMutablePointer<addrinfo>? = first
    while let info = cursor {
      if let sa = info.pointee.ai_addr {
        switch Int32(info.pointee.ai_family) {
        case AF_INET:
          let v4 = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee }
          out.append(SocketAddress(v4, host: host))
        case AF_INET6:
          let v6 = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee }
          out.append(SocketAddress(v6, host: host))
        default: break
        }
      }
      cursor = info.pointee.ai_next
    }
    guard !out.isEmpty else { throw Failure.noAddresses }
    return out
  }
}
