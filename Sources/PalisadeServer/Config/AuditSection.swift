public import PalisadeYAML

extension ServerConfig {
  /// `audit:` in the file; see ``PalisadeAudit/AuditConfiguration`` for each field. Without the section no
  /// audit records are kept (``ServerConfig/audit`` is nil).
  public struct Audit: ConfigSection {
    public var directory: String
    public var key: String
    public var durability: String = "sync"
    public var segmentMaxBytes: Int = 64 << 20
    public var batchIntervalMs: Int = 100
    public var checkpointEveryRecords: Int = 1000
    public var checkpointIntervalSeconds: Int = 10
    public var origin: String = "palisade.dev/audit"
    public init(directory: String, key: String) {
      self.directory = directory
      self.key = key
    }

    public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
      let directory = try map.requiredString("directory")
      let key = try map.requiredString("key", "is required (an Ed25519 key: palisade audit keygen)")
      self.init(directory: context.resolve(directory), key: context.resolve(key))
      durability = try map.choice("durability", ["sync", "batched"]) ?? durability
      try map.int("segment_max_bytes", in: 4096...(1 << 40), into: &segmentMaxBytes)
      try map.int("batch_interval_ms", in: 1...60_000, into: &batchIntervalMs)
      try map.int("checkpoint_every_records", in: 1...10_000_000, into: &checkpointEveryRecords)
      try map.int("checkpoint_interval_seconds", in: 1...86_400, into: &checkpointIntervalSeconds)
      try map.string("origin", into: &origin)
    }
  }
}
