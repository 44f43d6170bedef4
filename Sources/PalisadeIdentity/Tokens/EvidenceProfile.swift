/// The profile attestation evidence follows (RFC 9711 `eat_profile`). Here, below both the server that builds
/// evidence and the client that appraises it, so that the two read one spelling.
public enum EvidenceProfile {
  public static let v1 = "tag:palisade.dev,2026:evidence/v1"
}
