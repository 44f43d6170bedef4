public import PalisadeCore

/// Pipeline stage 4: finds the model a call names and refuses unknown (NOT_FOUND) or unready (UNAVAILABLE) ones.
public struct ModelResolver: Sendable {
  public let repository: ModelRepository

  public init(repository: ModelRepository) {
    self.repository = repository
  }

  /// The model for `name` at `version` (empty: the newest ready version).
  public func resolve(name: String, version: String) throws(PalisadeError) -> any ServableModel {
    try repository.resolve(name: name, version: version)
  }
}
