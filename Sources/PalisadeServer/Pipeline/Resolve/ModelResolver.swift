public import PalisadeCore

/// Pipeline stage 4: finds the model a call names and refuses unknown (NOT_FOUND) or unready (UNAVAILABLE) ones.
/// An unpinned call of a model with a rollout is routed by the ``RolloutController``.
public struct ModelResolver: Sendable {
  public let repository: ModelRepository
  /// Rollouts; nil: every unpinned call takes the newest ready version.
  public let rollouts: RolloutController?

  public init(repository: ModelRepository, rollouts: RolloutController? = nil) {
    self.repository = repository
    self.rollouts = rollouts
  }

  /// The model for `name` at `version` (empty: the version unpinned calls get, the newest ready one unless a
  /// rollout holds the stable version in place).
  public func resolve(name: String, version: String) throws(PalisadeError) -> any ServableModel {
    if version.isEmpty, let routed = rollouts?.defaultVersion(model: name),
      let model = try? repository.resolve(name: name, version: routed)
    {
      return model
    }
    return try repository.resolve(name: name, version: version)
  }

  /// ``resolve(name:version:)`` for one inference by `principal`: an unpinned call of a model with a rollout gets
  /// its route (the policy's version constraint, `allows`, keeps a caller off a candidate it may not use). A call
  /// that names a version is never routed. Without any rollout this costs one atomic load.
  public func resolve(name: String, version: String, principal: String, allows: (String) -> Bool) throws(PalisadeError)
    -> (model: any ServableModel, route: RolloutController.Route?)
  {
    guard version.isEmpty, let rollouts, let route = rollouts.route(model: name, principal: principal, allows: allows)
    else { return (try repository.resolve(name: name, version: version), nil) }
    // A routed version that just left (unloaded meanwhile) falls back to the default choice.
    if let model = try? repository.resolve(name: name, version: route.version) { return (model, route) }
    return (try repository.resolve(name: name, version: ""), nil)
  }
}
