public import ArgumentParser
import PalisadeTools

/// `palisade`: the root command. Each capability adds its subcommand when it lands.
public struct PalisadeCommand: AsyncParsableCommand {
  public static let configuration = CommandConfiguration(
    commandName: "palisade",
    abstract: "A secure model-serving server speaking the Open Inference Protocol over mutual TLS.",
    discussion: """
      Start the server with `palisade serve --config FILE`; talk to it with `palisade call`.
      Every command explains itself with --help.
      """,
    // `serve` is the only subcommand here that needs the server; the others live in PalisadeTools.
    subcommands: [ServeCommand.self] + ToolCommands.all
  )

  public init() {}
}
