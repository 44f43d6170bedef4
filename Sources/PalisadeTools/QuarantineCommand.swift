import ArgumentParser
import Foundation
import PalisadeProto

/// `palisade quarantine`: list and lift quarantines on a running server (`palisade.v1.Admin`).
struct QuarantineCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "quarantine",
    abstract: "List or lift quarantined principals on a running server.",
    discussion: """
      Principals are quarantined by the policy file's `quarantine` list (lifted by editing the file) or, when the
      policy's `containment.extraction` is `quarantine`, by the extraction monitor for
      `containment.quarantine_seconds`. Both RPCs are administrative: the policy must grant ListQuarantines /
      LiftQuarantine to the caller by name.
      """,
    subcommands: [List.self, Lift.self]
  )

  struct List: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Print the quarantines in force, one JSON object per line.")
    @OptionGroup var connection: CallCommand.Connection
    func run() async throws {
      let response = try await connection.connect { client in
        try await Palisade_V1_Admin.Client(wrapping: client).listQuarantines(.init())
      }
      for q in response.quarantines {
        var fields: [String: String] = ["principal": q.principal, "source": q.source, "reason": q.reason]
        if q.untilUnix > 0 {
          let f = ISO8601DateFormatter()
          fields["since"] = f.string(from: Date(timeIntervalSince1970: TimeInterval(q.sinceUnix)))
          fields["until"] = f.string(from: Date(timeIntervalSince1970: TimeInterval(q.untilUnix)))
        }
        if !q.model.isEmpty { fields["model"] = q.model }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        print(String(decoding: try encoder.encode(fields), as: UTF8.self))
      }
    }
  }

  struct Lift: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Lift the automatic quarantine of a principal.")
    @Argument(help: "The SPIFFE ID, e.g. spiffe://example.org/ns/prod/sa/batch-scorer.") var principal: String
    @OptionGroup var connection: CallCommand.Connection
    func run() async throws {
      let principal = self.principal
      let response = try await connection.connect { client in
        try await Palisade_V1_Admin.Client(wrapping: client).liftQuarantine(.with { $0.principal = principal })
      }
      if response.lifted {
        print("lifted")
      } else {
        print("no automatic quarantine for \(principal)")
        throw ExitCode(1)
      }
    }
  }
}
