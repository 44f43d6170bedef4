import Foundation
import Logging
import PalisadeSupport

// The cost of one JSON log line: the access-log line of an inference (seven metadata values), formatted by
// `JSONLogHandler` and by the implementation it replaced (JSONSerialization with sorted keys and a fresh
// ISO8601DateFormatter per line, kept below as the reference). Formatting only, no write. Run: Benchmarks/logline/run.sh
let event = LogEvent(
  level: .info, message: "inference",
  metadata: [
    "request_id": "3f2a9c1e-000001", "principal": "spiffe://palisade.dev/ns/demo/sa/client-a", "model": "digits",
    "version": "3", "status": "OK", "latency_us": "412", "token_id": "b7c1d2e3",
  ], source: "s", file: "f", function: "g", line: 1)

func foundationLine(_ event: LogEvent) -> Data? {
  let formatter = ISO8601DateFormatter()
  formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
  var object: [String: Any] = [
    "time": formatter.string(from: Date()), "level": event.level.rawValue,
    "msg": LogEscaping.escape("\(event.message)"), "logger": "palisade",
  ]
  for (key, value) in event.metadata ?? [:] { object[LogEscaping.escape(key)] = "\(LogEscaping.escape(value))" }
  return try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
}

let handler = JSONLogHandler(label: "palisade", level: .info)
var bytes = 0
var results: [(String, Double)] = []
for (name, body) in [
  ("JSONSerialization + ISO8601DateFormatter (before)", { bytes &+= foundationLine(event)?.count ?? 0 }),
  ("JSONLogHandler.line (now)", { bytes &+= handler.line(event).count }),
] {
  for _ in 0..<2000 { body() }
  let n = 50_000
  let start = ContinuousClock.now
  for _ in 0..<n { body() }
  let elapsed = ContinuousClock.now - start
  let ns = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
  results.append((name, ns / Double(n)))
}
for (name, ns) in results { print(String(format: "%8.2f us per line  %@", ns / 1000, name)) }
print(String(format: "ratio %.1fx (%d bytes formatted)", results[0].1 / results[1].1, bytes))
