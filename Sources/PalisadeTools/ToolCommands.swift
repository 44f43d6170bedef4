public import ArgumentParser

/// The subcommands that do not run the server: clients of a running server (`call`, `quarantine`, `attest`), the
/// publisher's and operator's offline tools (`token`, `policy`, `bundle`, `audit`, `attest verify`) and the egress
/// sidecar. This target does not depend on PalisadeServer (the layering test checks it), so none of these code paths
/// can reach into the server.
public enum ToolCommands {
  /// In the order `palisade --help` lists them, after `serve`.
  public static var all: [any ParsableCommand.Type] {
    [
      CallCommand.self, TokenCommand.self, PolicyCommand.self, BundleCommand.self, QuarantineCommand.self,
      RolloutCommand.self, AttestCommand.self, AuditCommand.self, EgressCommand.self,
    ]
  }
}
