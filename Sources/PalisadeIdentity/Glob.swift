/// Shell-style globs for names: `*` matches any run of characters within one separator-delimited segment, `**` any
/// run across segments, `?` one character that is not the separator; everything else is literal, compared by
/// Unicode scalar (not canonical equivalence: "K" and the Kelvin sign are different names).
///
/// Matching is dynamic programming over (pattern position, text position), so it takes time proportional to the
/// pattern's length times the text's, whatever the stars: a backtracking matcher is polynomial in the number of
/// stars, and the text is often the caller's (a model name in a request, a name in a signer's certificate).
public enum Glob {
  public static func matches(pattern: String, _ text: String, separator: Unicode.Scalar = "/") -> Bool {
    let p = Array(pattern.unicodeScalars)
    let t = Array(text.unicodeScalars)
    // Row i holds, for every j, whether p[i...] matches t[j...]; rows are computed from the pattern's end, and
    // row i needs only rows i+1 and i+2 (after `**`).
    var next = [Bool](repeating: false, count: t.count + 1)
    next[t.count] = true  // the empty pattern matches only the empty text
    var nextButOne = [Bool](repeating: false, count: t.count + 1)
    var row = [Bool](repeating: false, count: t.count + 1)
    var i = p.count - 1
    while i >= 0 {
      let isStar = p[i] == "*"
      let isDouble = isStar && i + 1 < p.count && p[i + 1] == "*"
      var j = t.count
      while j >= 0 {
        let more = j < t.count
        row[j] =
          if isDouble {
            nextButOne[j] || (more && row[j + 1])
          } else if isStar {
            next[j] || (more && t[j] != separator && row[j + 1])
          } else if p[i] == "?" {
            more && t[j] != separator && next[j + 1]
          } else {
            more && t[j] == p[i] && next[j + 1]
          }
        j -= 1
      }
      swap(&nextButOne, &next)
      swap(&next, &row)
      i -= 1
    }
    return next[0]
  }
}
