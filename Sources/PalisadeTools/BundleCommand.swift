import ArgumentParser
import Foundation
import PalisadeBundle
import PalisadeCore
import PalisadeRuntime
import PalisadeScreening

/// `palisade bundle`: make, sign, verify, inspect and pack model bundles.
struct BundleCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bundle",
    abstract: "Make, sign, verify, inspect and pack signed model bundles (OpenSSF Model Signing format).",
    discussion: """
      A bundle is a directory holding the model file(s), manifest.json and model.sig. Signatures interoperate with
      the `model_signing` CLI (key and certificate methods, ECDSA P-256/P-384/P-521). The server serves bundles laid
      out as <models-dir>/<name>/<version>/ or <models-dir>/<name>/<version>.tar.zst.
      """,
    subcommands: [Init.self, Stats.self, Sign.self, Verify.self, Inspect.self, Pack.self]
  )

  static func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("palisade bundle: \(message)\n".utf8))
    return ExitCode(1)
  }

  struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Make an unsigned bundle directory: copy the model file and write manifest.json.",
      discussion: """
        For an .onnx model, inputs and outputs are read from the graph (symbolic dimensions become -1) unless given.
        Tensors are NAME:DATATYPE:DIMS, e.g. input:FP32:-1,64 (-1 = variable dimension).
        """)
    @Option(help: "The model file (e.g. model.onnx).") var model: String
    @Option(help: "The model name the server serves it under.") var name: String
    @Option(help: "The version, a positive integer.") var version: Int
    @Option(help: "An input tensor (repeatable).") var input: [String] = []
    @Option(help: "An output tensor (repeatable).") var output: [String] = []
    @Option(help: "Days until the bundle expires.") var expiresDays = 90
    @Option(help: "Largest batch the model accepts.") var maxBatch: Int?
    @Option(help: "The bundle directory to create.") var out: String
    @Option(
      help:
        "A sample of training inputs (.npy or CSV): adds reference statistics and an OOD threshold (see `bundle stats`)."
    )
    var stats: String?
    @Option(help: "The input the --stats sample belongs to (default: the first input).") var statsInput: String?
    @Option(help: "Covariance kept in the statistics: diagonal or full.") var covariance: String = "diagonal"
    @Option(help: "What the server does with out-of-distribution inputs: flag or reject.") var oodAction: String =
      "flag"
    @Option(help: "Output policy: keep only the k best scores per row.") var topK: Int?
    @Option(help: "Output policy: round scores to this many decimals.") var roundDecimals: Int?
    @Flag(help: "Output policy: send only the arg-max label.") var labelOnly = false
    @Option(help: "Output policy: pad responses to a multiple of this many bytes.") var padToBucketBytes: Int?
    @Option(help: "Class labels, comma-separated, by class index.") var labels: String?

    func run() throws {
      func tensors(_ specs: [String]) throws -> [BundleManifest.Tensor] {
        try specs.map { s in
          let parts = s.split(separator: ":", omittingEmptySubsequences: false).map(String.init)
          guard parts.count == 3, let dt = BundleManifest.Datatype(rawValue: parts[1]) else {
            throw ValidationError("tensor '\(s)' must be NAME:DATATYPE:DIMS with an OIP datatype")
          }
          let dims =
            parts[2].isEmpty
            ? []
            : try parts[2].split(separator: ",").map { d -> Int64 in
              guard let v = Int64(d), v >= -1 else { throw ValidationError("bad dimension '\(d)' in '\(s)'") }
              return v
            }
          return BundleManifest.Tensor(name: parts[0], datatype: dt, shape: dims)
        }
      }
      var inputs = try tensors(input)
      var outputs = try tensors(output)
      if (inputs.isEmpty || outputs.isEmpty) && model.hasSuffix(".onnx") {
        // Read the declaration from the graph: parsing an unsigned model is fine here, on the publisher's side.
        let graph: ONNXModel
        do { graph = try ONNXModel.load(contentsOf: URL(fileURLWithPath: model)) } catch {
          throw BundleCommand.fail("\(model): \(error)")
        }
        func manifestTensor(_ spec: TensorSpec) throws -> BundleManifest.Tensor {
          guard let dt = BundleManifest.Datatype(rawValue: spec.datatype.rawValue) else {
            throw ValidationError("\(spec.name): datatype \(spec.datatype.rawValue) is not allowed in a manifest")
          }
          return BundleManifest.Tensor(name: spec.name, datatype: dt, shape: spec.shape)
        }
        if inputs.isEmpty { inputs = try graph.inputSpecs.map(manifestTensor) }
        if outputs.isEmpty { outputs = try graph.outputSpecs.map(manifestTensor) }
      }
      guard !inputs.isEmpty, !outputs.isEmpty else {
        throw ValidationError("give at least one --input and one --output (read from the graph for .onnx files)")
      }
      var screening: BundleManifest.ScreeningPolicy? = nil
      if let stats {
        guard let action = BundleManifest.ScreeningPolicy.Action(rawValue: oodAction) else {
          throw ValidationError("--ood-action must be flag or reject")
        }
        let target = statsInput ?? inputs[0].name
        guard let index = inputs.firstIndex(where: { $0.name == target }) else {
          throw ValidationError("--stats-input '\(target)' is not an input of the model")
        }
        let result = try Stats.compute(sample: stats, covariance: covariance)
        inputs[index].referenceStatistics = Stats.manifestStatistics(result)
        screening = .init(oodThreshold: result.suggestedThreshold, action: action)
      }
      let policy = BundleManifest.OutputPolicy(
        topK: topK, roundDecimals: roundDecimals, labelOnly: labelOnly ? true : nil, padToBucketBytes: padToBucketBytes)
      let fileName = URL(fileURLWithPath: model).lastPathComponent
      let manifest = BundleManifest(
        name: name, version: version, created: Date(), expires: Date().addingTimeInterval(Double(expiresDays) * 86_400),
        modelFile: fileName, inputs: inputs, outputs: outputs,
        labels: labels.map { $0.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) } },
        outputPolicy: policy == BundleManifest.OutputPolicy() ? nil : policy, screeningPolicy: screening,
        maxBatch: maxBatch)
      do {
        try manifest.validate()
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: model, toPath: "\(out)/\(fileName)")
        try Data(try manifest.encodedJSON()).write(to: URL(fileURLWithPath: "\(out)/manifest.json"))
      } catch {
        throw BundleCommand.fail("\(error)")
      }
      print("bundle \(name) v\(version) in \(out); sign it with `palisade bundle sign \(out) --key KEY.pem`")
    }
  }

  struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Compute reference statistics of a sample of training inputs, for out-of-distribution screening.",
      discussion: """
        SAMPLE is a NumPy .npy file (rows × features; float32/float64/int) or a CSV file of numbers (an optional
        header row). Prints JSON with `reference_statistics` (mean, std and the diagonal or full covariance) and a
        suggested `screening_policy.ood_threshold`: 1.25 × the 99.9th percentile of the sample's own Mahalanobis
        distances, scored exactly as the server scores requests. `bundle init --stats SAMPLE` puts both into a new
        manifest.
        """)
    @Argument(help: "The sample file (.npy or CSV).") var sample: String
    @Option(help: "Covariance kept: diagonal or full.") var covariance: String = "diagonal"

    static func compute(sample: String, covariance: String) throws -> ReferenceStatisticsBuilder.Result {
      guard let kind = ReferenceStatisticsBuilder.Covariance(rawValue: covariance) else {
        throw ValidationError("--covariance must be diagonal or full")
      }
      do {
        return try ReferenceStatisticsBuilder().build(try SampleFile.read(path: sample), covariance: kind)
      } catch {
        throw BundleCommand.fail("\(sample): \(error.description)")
      }
    }

    static func manifestStatistics(_ r: ReferenceStatisticsBuilder.Result) -> BundleManifest.ReferenceStatistics {
      .init(
        mean: r.reference.mean, std: r.reference.std, covariance: r.reference.covariance,
        covarianceDiagonal: r.reference.covarianceDiagonal)
    }

    func run() throws {
      let result = try Self.compute(sample: sample, covariance: covariance)
      struct Output: Encodable {
        var rows: Int
        var observed_min: [Double]
        var observed_max: [Double]
        var reference_statistics: BundleManifest.ReferenceStatistics
        var screening_policy: BundleManifest.ScreeningPolicy
      }
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
      let out = Output(
        rows: result.rows, observed_min: result.min, observed_max: result.max,
        reference_statistics: Self.manifestStatistics(result),
        screening_policy: .init(oodThreshold: result.suggestedThreshold, action: .flag))
      print(String(decoding: try encoder.encode(out), as: UTF8.self))
    }
  }

  struct Sign: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Sign a bundle directory, writing model.sig inside it (verifiable by `model_signing verify`).")
    @Argument(help: "The bundle directory.") var directory: String
    @Option(help: "The signer's private key (PEM, ECDSA P-256/P-384/P-521).") var key: String
    @Option(help: "Certificate chain (PEM, leaf first): sign with the certificate method instead of the key method.")
    var certificateChain: String?

    func run() async throws {
      do {
        let keyPEM = try String(contentsOfFile: key, encoding: .utf8)
        let chain = try certificateChain.map { try String(contentsOfFile: $0, encoding: .utf8) }
        let result = try await BundleSigner.sign(directory: directory, keyPEM: keyPEM, certificateChainPEM: chain)
        print("signed \(result.files.count) files, root digest \(result.rootDigest): \(result.signaturePath)")
      } catch {
        throw BundleCommand.fail("\(error)")
      }
    }
  }

  struct Verify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Verify a bundle as the server would: signature, every file, trust for the name, manifest, expiry.")
    @Argument(help: "The bundle directory.") var directory: String
    @Option(help: "The model name the bundle must be for.") var name: String
    @Option(help: "A trusted public key (PEM; repeatable).") var publicKey: [String] = []
    @Option(help: "A trusted CA root for the certificate method (PEM; repeatable).") var caRoot: [String] = []
    @Option(help: "Glob the signing certificate's subject CN must match.") var signerSubject: String?
    @Option(help: "dns:GLOB, uri:GLOB or email:GLOB the signing certificate's SANs must match.") var signerSan: String?

    func run() async throws {
      guard !publicKey.isEmpty || !caRoot.isEmpty else { throw ValidationError("give --public-key or --ca-root") }
      do {
        let trust = try TrustPolicy.load([
          .init(
            models: name, publicKeys: publicKey, certificateRoots: caRoot, signerSubject: signerSubject,
            signerSAN: signerSan)
        ])
        let verified = try await BundleVerifier.verify(directory: directory, trust: trust, modelName: name)
        let manifest = try verified.manifest()
        print(
          "verified: \(manifest.name) v\(manifest.version), signer \(verified.signer), \(verified.files.count) files, expires \(manifest.expires)"
        )
      } catch {
        throw BundleCommand.fail("refused: \(error)")
      }
    }
  }

  struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Show what a bundle's signature claims (signer hint, files, digests) WITHOUT verifying it.")
    @Argument(help: "The bundle directory.") var directory: String
    func run() throws {
      do {
        let s = try BundleInspector.unverifiedSignatureSummary(directory: directory)
        print("UNVERIFIED claims of \(directory)/model.sig")
        print("method: \(s.method.rawValue)\(s.keyHint.map { ", key hint \($0)" } ?? "")")
        for subject in s.certificateSubjects { print("certificate: \(subject)") }
        print("root digest: \(s.rootDigest)")
        print("ignore_paths: \(s.ignorePaths.joined(separator: ", "))")
        for r in s.resources { print("  \(r.sha256)  \(r.name)") }
      } catch {
        throw BundleCommand.fail("\(error)")
      }
    }
  }

  struct Pack: ParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Pack a signed bundle directory into a .tar.zst file.",
      discussion:
        "model.sig is the first entry (the server verifies it before it unpacks anything else), then the signed files; "
        + "files the signature does not cover (.git, .gitignore, ...) are left out. An unsigned directory is refused.")
    @Argument(help: "The bundle directory.") var directory: String
    @Option(help: "The archive to write, e.g. models/digits/3.tar.zst.") var out: String
    func run() throws {
      do { try BundlePacker.pack(directory: directory, to: out) } catch { throw BundleCommand.fail("\(error)") }
      print("packed \(directory) into \(out)")
    }
  }
}
