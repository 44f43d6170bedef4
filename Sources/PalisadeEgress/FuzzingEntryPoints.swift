package import NIOHTTP1

/// Package-visible door to the proxy's head checks for the fuzz targets in `Sources/PalisadeFuzzTargets`: what the
/// proxy does with a parsed request head before any byte leaves (codings, target forms, the allowlist decision).
/// Nothing in the product calls this.
package enum EgressParsers {
  package static func examine(_ head: HTTPRequestHead, destinations: [EgressConfig.Destination]) {
    _ = EgressProxy.opaqueCoding(head)
    let policy = EgressPolicy(destinations: destinations)
    if let target = ProxyTarget(authority: head.uri) {
      _ = policy.connectDestination(target)
      _ = target.authority
    }
    if let target = ProxyTarget(absoluteURI: head.uri) {
      _ = policy.decide(method: head.method.rawValue, target: target)
      _ = target.authority
    }
  }
}
