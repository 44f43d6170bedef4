public import PalisadeYAML

/// `rollouts:`, read by ``RolloutSettings/init(yaml:)`` beside the rollout controller (`Rollout/RolloutSettings.swift`).
extension RolloutSettings: DefaultedConfigSection {
  public init(reading map: YAMLMap, in context: ConfigContext) throws(YAMLError) {
    try self.init(yaml: map)
  }
}
