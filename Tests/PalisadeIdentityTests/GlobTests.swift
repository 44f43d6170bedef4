import PalisadeIdentity
import Testing

/// The one glob matcher (policy model patterns, bundle trust rules, signer names).
@Suite struct GlobTests {
  @Test(arguments: [
    ("digits", "digits", true), ("digits", "digits2", false), ("digits", "digit", false),
    ("*", "digits", true), ("*", "", true), ("*", "team/x", false), ("**", "team/x/y", true),
    ("team-a/*", "team-a/x", true), ("team-a/*", "team-a/x/y", false), ("team-a/**", "team-a/x/y", true),
    ("team-a/**", "team-a/", true), ("*-prod", "a-b-prod", true), ("*-*-prod", "a-b-prod", true),
    ("*-*-prod", "a-prod", false), ("d?gits", "digits", true), ("d?gits", "d/gits", false), ("?", "", false),
    ("a**b", "a/x/b", true), ("a*b", "a/x/b", false), ("***", "x/y", true), ("", "", true), ("", "x", false),
    ("K*", "\u{212A}digits", false), ("Kdigits", "\u{212A}digits", false),
  ])
  func matches(_ pattern: String, _ text: String, _ expected: Bool) {
    #expect(Glob.matches(pattern: pattern, text) == expected, "\(pattern) ~ \(text)")
  }

  @Test func theSeparatorIsAParameter() {
    #expect(Glob.matches(pattern: "*.example.com", "a.example.com", separator: "."))
    #expect(!Glob.matches(pattern: "*.example.com", "a.b.example.com", separator: "."))
    #expect(Glob.matches(pattern: "**.example.com", "a.b.example.com", separator: "."))
  }

  /// Patterns with many stars against long names that almost match: a backtracking matcher takes time polynomial
  /// in the stars (a cubic 55 s for three stars and 6,000 characters); this one is linear in each.
  @Test func manyStarsOnALongNameThatAlmostMatches() {
    let name = String(repeating: "a-", count: 20_000)
    #expect(!Glob.matches(pattern: "*-*-*-*-*-prod", name))
    #expect(!Glob.matches(pattern: "**-**-**-**-prod", name))
    #expect(Glob.matches(pattern: "*-*-*-*-*-", name))
  }
}
