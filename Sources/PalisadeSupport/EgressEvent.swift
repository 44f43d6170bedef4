public import Foundation

/// One blocked request, as the egress sidecar reports it to the server's audit log (one JSON object per datagram on
/// `report_socket`, docs/egress.md) and to the alert webhook. It says what and where, never the data: no path, no
/// query, no header or body bytes. Here, below both the sidecar that writes it and the server that reads it, so
/// that the two processes share one definition of the format.
public struct EgressEvent: Codable, Sendable, Equatable {
  /// The only schema this version writes and accepts.
  public static let schemaV1 = "palisade.egress/v1"

  /// Always `palisade.egress/v1`.
  public var schema: String
  /// Always `blocked`.
  public var type: String
  /// RFC 3339 UTC.
  public var time: String
  /// Unique per event.
  public var id: String
  /// A `BlockReason` raw value (PalisadeEgress).
  public var reason: String
  /// `url`, `header`, `body` or `request`.
  public var location: String
  /// What was found (e.g. "canary token (bundle digits v1)"); never the secret itself.
  public var detail: String
  /// The matching destination's name, when the host is allowlisted.
  public var destination: String?
  public var method: String
  public var scheme: String
  public var host: String
  public var port: Int
  /// Body bytes of the refused request.
  public var bodyBytes: Int

  enum CodingKeys: String, CodingKey {
    case schema, type, time, id, reason, location, detail, destination, method, scheme, host, port
    case bodyBytes = "body_bytes"
  }

  /// A new `blocked` event with a fresh id, stamped `time`.
  public init(
    reason: String, location: String, detail: String, destination: String?, method: String, scheme: String,
    host: String, port: Int, bodyBytes: Int, time: Date = Date()
  ) {
    schema = Self.schemaV1
    type = "blocked"
    self.time = RFC3339.string(secondsSince1970: time.timeIntervalSince1970, milliseconds: true)
    id = UUID().uuidString.lowercased()
    self.reason = reason
    self.location = location
    self.detail = detail
    self.destination = destination
    self.method = method
    self.scheme = scheme
    self.host = host
    self.port = port
    self.bodyBytes = bodyBytes
  }

  /// One line of JSON (sorted keys), without the newline.
  public func jsonLine() -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return (try? Array(encoder.encode(self))) ?? []
  }

  /// The event in one received report, or nil when it is not a well-formed `palisade.egress/v1` `blocked` event.
  public static func decode(_ bytes: [UInt8]) -> EgressEvent? {
    guard let event = try? JSONDecoder().decode(EgressEvent.self, from: Data(bytes)),
      event.schema == schemaV1, event.type == "blocked"
    else { return nil }
    return event
  }
}
