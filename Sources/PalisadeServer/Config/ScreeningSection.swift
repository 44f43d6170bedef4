public import PalisadeYAML

/// `screening:` (pipeline stage 6). `extraction_monitor` holds the monitor's switch beside its settings, so it is
/// read here.
extension InputScreener.Settings: DefaultedConfigSection {
  public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
    self = .defaults
    try map.int("drift_window", in: 10...1_000_000, into: &driftWindow)
    if let e = try map.map("extraction_monitor") {
      try e.bool("enabled", into: &extractionMonitor)
      try e.int("history", in: 1...100_000, into: &extraction.history)
      try e.int("window", in: 20...5000, into: &extraction.window)
      try e.double("normality_threshold", in: 0...1, into: &extraction.normalityThreshold)
      try e.double("ood_share_threshold", in: 0...1, into: &extraction.oodShareThreshold)
      try e.int("max_principals", in: 1...10_000_000, into: &extraction.maxPrincipals)
      try e.finish()
    }
  }
}
