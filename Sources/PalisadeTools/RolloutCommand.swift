import ArgumentParser
import Foundation
import PalisadeProto

/// `palisade rollout`: canary and shadow rollouts of model versions on a running server (`palisade.v1.Admin`).
struct RolloutCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "rollout",
    abstract: "Start, watch, promote or abort canary and shadow rollouts of model versions.",
    discussion: """
      A rollout sends a share of a model's unpinned calls to a candidate version (canary, sticky per caller) or
      also runs a share of them on it (shadow), compares both versions over the same window (errors, p99
      latency, out-of-distribution flags, the shift of predicted labels) and promotes the candidate after
      enough calls within the thresholds, or rolls it back at the first breach. The RPCs are administrative: the
      policy must grant RolloutStart / RolloutStatus / RolloutPromote / RolloutAbort by name. Output: one JSON
      object per rollout.
      """,
    subcommands: [Status.self, Start.self, Promote.self, Abort.self]
  )

  struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print the rollouts (of one model, or all).")
    @Argument(help: "The model; omitted: every model with a rollout.") var model: String?
    @OptionGroup var connection: CallCommand.Connection
    func run() async throws {
      let model = self.model ?? ""
      let response = try await connection.connect { client in
        try await Palisade_V1_Admin.Client(wrapping: client).rolloutStatus(.with { $0.model = model })
      }
      // stdout stays one JSON object per rollout; the note for a person goes to stderr.
      if response.rollouts.isEmpty {
        FileHandle.standardError.write(Data("no rollouts\(model.isEmpty ? "" : " of '\(model)'")\n".utf8))
      }
      try RolloutCommand.print(response)
    }
  }

  struct Start: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Start a rollout of a candidate version.")
    @Argument(help: "The model.") var model: String
    @Option(help: "The candidate version (default: the newest bundle in the server's model directories).")
    var version: String?
    @Option(help: "canary or shadow (default: the server's rollouts.defaults).") var mode: String?
    @Option(help: "Share of unpinned calls, 0 < share <= 1 (default: the server's).") var share: Double?
    @Option(help: "Promote after this many candidate calls within the thresholds.") var promoteAfterCalls: Int64?
    @Option(help: "Or after this many seconds.") var promoteAfterSeconds: Int64?
    @OptionGroup var connection: CallCommand.Connection
    func validate() throws {
      if let mode, mode != "canary" && mode != "shadow" { throw ValidationError("--mode must be canary or shadow") }
      if let share, !(share > 0 && share <= 1) { throw ValidationError("--share must be in (0, 1]") }
    }
    func run() async throws {
      let request = Palisade_V1_RolloutStartRequest.with {
        $0.model = model
        $0.candidateVersion = version ?? ""
        $0.mode = mode ?? ""
        $0.share = share ?? 0
        $0.promoteAfterCalls = promoteAfterCalls ?? 0
        $0.promoteAfterSeconds = promoteAfterSeconds ?? 0
      }
      let response = try await connection.connect { client in
        try await Palisade_V1_Admin.Client(wrapping: client).rolloutStart(request)
      }
      try RolloutCommand.print(response)
    }
  }

  struct Promote: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Promote the candidate of a model's active rollout now.")
    @Argument(help: "The model.") var model: String
    @OptionGroup var connection: CallCommand.Connection
    func run() async throws {
      let model = self.model
      let response = try await connection.connect { client in
        try await Palisade_V1_Admin.Client(wrapping: client).rolloutPromote(.with { $0.model = model })
      }
      try RolloutCommand.print(response)
    }
  }

  struct Abort: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Abort a model's active rollout: the candidate stops taking traffic and stays loaded.")
    @Argument(help: "The model.") var model: String
    @Option(help: "Why, for the audit log.") var reason: String?
    @OptionGroup var connection: CallCommand.Connection
    func run() async throws {
      let (model, reason) = (self.model, self.reason ?? "")
      let response = try await connection.connect { client in
        try await Palisade_V1_Admin.Client(wrapping: client).rolloutAbort(
          .with {
            $0.model = model
            $0.reason = reason
          })
      }
      try RolloutCommand.print(response)
    }
  }

  /// One JSON object per rollout, keys sorted.
  static func print(_ response: Palisade_V1_RolloutStatusResponse) throws {
    func window(_ w: Palisade_V1_RolloutVersionWindow) -> [String: Any] {
      [
        "version": w.version, "calls": w.calls, "errors": w.errors, "error_rate": round4(w.errorRate),
        "p99_ms": round4(w.p99Ms), "ood_rate": round4(w.oodRate),
      ]
    }
    for r in response.rollouts {
      var object: [String: Any] = [
        "model": r.model, "rollout_id": r.rolloutID, "mode": r.mode, "state": r.state, "share": r.share,
        "stable": window(r.stable), "candidate": window(r.candidate), "label_psi": round4(r.labelPsi),
      ]
      let f = ISO8601DateFormatter()
      object["started"] = f.string(from: Date(timeIntervalSince1970: TimeInterval(r.startedUnix)))
      if r.endedUnix > 0 { object["ended"] = f.string(from: Date(timeIntervalSince1970: TimeInterval(r.endedUnix))) }
      if !r.reason.isEmpty { object["reason"] = r.reason }
      if r.mode == "shadow" {
        object["shadow_compared"] = r.shadowCompared
        object["shadow_agreement"] = round4(r.shadowAgreement)
        object["shadow_skipped"] = r.shadowSkipped
      }
      let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
      Swift.print(String(decoding: data, as: UTF8.self))
    }
  }

  static func round4(_ v: Double) -> Double { (v * 10_000).rounded() / 10_000 }
}
