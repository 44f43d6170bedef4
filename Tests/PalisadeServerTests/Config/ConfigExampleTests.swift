import Foundation
import PalisadeServer
import PalisadeYAML
import Testing

/// The annotated example (`deploy/palisade.example.yaml`) and the section parsers must know the same settings: a
/// setting added to a section type without an entry in the example, or an example entry no section reads, fails
/// here.
@Suite struct ConfigExampleTests {
  static let examplePath = "\(repositoryRoot)/deploy/palisade.example.yaml"

  /// A comment line that holds a setting (`# key: value`, `# - key: value`, `#   key: value`) rather than prose.
  static func isCommentedOutSetting(_ line: Substring) -> Bool {
    let body = line.drop { $0 == " " }
    guard body.hasPrefix("# ") else { return false }
    var rest = body.dropFirst(2)
    if rest.hasPrefix("- ") { rest = rest.dropFirst(2) }
    rest = rest.drop { $0 == " " }
    let key = rest.prefix { $0.isLowercase || $0.isNumber || $0 == "_" }
    guard !key.isEmpty else { return false }
    let after = rest.dropFirst(key.count)
    return after == ":" || after.hasPrefix(": ")
  }

  /// The example with its commented-out settings (optional ones without a default, alternatives) switched on:
  /// the first `# ` after the indentation removed, which keeps nested lines nested.
  static func uncommented(_ text: String) -> (text: String, lines: Int) {
    var count = 0
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> Substring in
      guard isCommentedOutSetting(line), let hash = line.firstIndex(of: "#") else { return line }
      count += 1
      return line[..<hash] + line[line.index(hash, offsetBy: 2)...]
    }
    return (lines.joined(separator: "\n"), count)
  }

  @Test func everySettingInTheExampleParsesAndEverySettingTheParserReadsIsInIt() throws {
    let text = try String(contentsOfFile: Self.examplePath, encoding: .utf8)
    let (full, switchedOn) = Self.uncommented(text)
    #expect(switchedOn >= 3, "the example shows optional settings commented out (report_sender_uids, sbom, ...)")
    let log = YAMLKeyLog()
    // Throws on any key no section reads (the sections refuse unknown keys) and on any value out of range.
    let config: ServerConfig
    do {
      config = try ServerConfig.parse(
        YAMLMap.parse(full, file: Self.examplePath, keyLog: log), baseDirectory: repositoryRoot + "/deploy")
    } catch {
      Issue.record(
        """
        \(error)
        (with its commented-out settings switched on: a comment line that reads `key: value` is taken for one, so
        write prose as `key`: ...)
        """)
      return
    }
    let missing = log.asked.subtracting(log.present).sorted()
    #expect(
      missing.isEmpty,
      "settings the parser reads that deploy/palisade.example.yaml does not show (add each with a comment): \(missing)")
    // The commented-out ones took effect, so they were parsed where they stand.
    #expect(config.auth.issuers.map(\.kind) == [.oauth, .spiffe])
    #expect(config.egress.reportSenderUIDs != nil && config.egress.checkpointURL != nil)
    #expect(config.attestation.sbom != nil)
  }

  @Test func anEmptySectionIsItsDefaults() throws {
    func check<S: DefaultedConfigSection>(_ type: S.Type) throws {
      let empty = try YAMLMap.parse("")
      #expect(try S(reading: empty, in: ConfigContext(baseDirectory: "/")) == S.defaults, "\(type)")
    }
    try check(ServerConfig.Limits.self)
    try check(ServerConfig.Connection.self)
    try check(ServerConfig.HTTP2.self)
    try check(ServerConfig.Admin.self)
    try check(ServerConfig.Models.self)
    try check(ServerConfig.Reload.self)
    try check(ServerConfig.Egress.self)
    try check(ServerConfig.Attestation.self)
    try check(ServerConfig.Logging.self)
    try check(Scheduler.Settings.self)
    try check(CircuitBreaker.Settings.self)
    try check(InputScreener.Settings.self)
    try check(RolloutSettings.self)
    try check(TracingSettings.self)
  }

  @Test func theKeyLogSeesListsAndNestedSections() throws {
    let log = YAMLKeyLog()
    let root = try YAMLMap.parse("a: {b: 1}\nl: [{c: x}, {d: y}]\n", keyLog: log)
    _ = try root.map("a")?.int("b", in: 0...1)
    for m in try root.maps("l") ?? [] { _ = try m.string("c") }
    _ = try root.string("unset")
    #expect(log.present == ["a", "a.b", "l", "l[].c", "l[].d"])
    #expect(log.asked == ["a", "a.b", "l", "l[].c", "unset"])
  }

  @Test func proseCommentsAreNotSettings() {
    #expect(Self.isCommentedOutSetting("  # report_sender_uids: [65533]"))
    #expect(Self.isCommentedOutSetting("    # - issuer: spiffe://palisade.dev"))
    #expect(Self.isCommentedOutSetting("    #   kind: spiffe"))
    #expect(!Self.isCommentedOutSetting("  # The sidecar's forward proxy (host:port or unix:/path): the only way out"))
    #expect(!Self.isCommentedOutSetting("  # `sync`: a response is sent only after its record's fsync"))
    #expect(!Self.isCommentedOutSetting("# Palisade server configuration: every setting"))
  }
}
