public import PalisadeYAML

extension ServerConfig {
  /// `egress:`, the egress sidecar: where its block reports arrive, and the proxy the server's own outbound
  /// traffic uses.
  public struct Egress: DefaultedConfigSection {
    /// Unix datagram socket the sidecar's `report_socket` points at; nil: reports are not received.
    public var reportSocket: String?
    /// Permissions of the socket file (the sidecar's user must be able to write to it).
    public var reportSocketMode: Int = 0o660
    /// UIDs whose reports are accepted, checked against the kernel's per-datagram sender credentials; nil: the
    /// server's own UID only. Set it to the sidecar's UID when the sidecar runs as its own user (Kubernetes).
    public var reportSenderUIDs: [UInt32]?
    /// The sidecar's forward proxy, `host:port`: the only way out for checkpoint shipping.
    public var proxy: String?
    /// Where signed audit checkpoints are POSTed (through `proxy`); nil: not shipped.
    public var checkpointURL: String?
    public init(reportSocket: String? = nil, proxy: String? = nil, checkpointURL: String? = nil) {
      self.reportSocket = reportSocket
      self.proxy = proxy
      self.checkpointURL = checkpointURL
    }
    public static let defaults = Egress()

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      self = .defaults
      reportSocket = try map.string("report_socket").map(context.resolve)
      if let mode = try map.string("report_socket_mode") {
        guard let v = Int(mode, radix: 8), (0...0o777).contains(v) else {
          throw map.error("report_socket_mode", "must be octal permissions like \"0660\"")
        }
        reportSocketMode = v
      }
      if let uids = try map.strings("report_sender_uids") {
        guard !uids.isEmpty else {
          throw map.error("report_sender_uids", "must list at least one UID (omit it for the server's own UID)")
        }
        reportSenderUIDs = try uids.map { (text: String) throws(YAMLError) -> UInt32 in
          // 4294967295 is (uid_t)-1, "no user".
          guard let uid = UInt32(text), uid != UInt32.max else {
            throw map.error("report_sender_uids", "'\(text)' is not a UID (an integer from 0 to 4294967294)")
          }
          return uid
        }
      }
      proxy = try map.string("proxy")
      if let p = proxy, !p.hasPrefix("unix:/") {
        _ = try context.hostPort(p, key: "proxy", in: map)
      }
      checkpointURL = try map.string("checkpoint_url")
      if checkpointURL != nil && proxy == nil {
        throw map.error("proxy", "is required with checkpoint_url: nothing leaves except through the egress sidecar")
      }
      if let url = checkpointURL, !(url.hasPrefix("https://") || url.hasPrefix("http://")) {
        throw map.error("checkpoint_url", "must be an http(s) URL")
      }
    }
  }
}
