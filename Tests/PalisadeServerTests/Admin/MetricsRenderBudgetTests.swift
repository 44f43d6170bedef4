import PalisadeSupport
import Synchronization
import Testing

/// `/metrics` renders per second: the budget, the repeat of the last render beyond it, the next second.
@Suite struct MetricsRenderBudgetTests {
  final class TestClock: Sendable {
    let start = ContinuousClock.now
    let offset = Mutex(Duration.zero)
    var now: ContinuousClock.Instant { start + offset.withLock { $0 } }
    func advance(_ d: Duration) { offset.withLock { $0 += d } }
  }

  @Test func beyondTheBudgetTheLastRenderIsRepeatedUntilTheNextSecond() {
    let clock = TestClock()
    let budget = MetricsRenderBudget(perSecond: 3, now: { clock.now })
    let renders = Mutex(0)
    func ask() -> (bytes: [UInt8], fresh: Bool) {
      budget.body {
        renders.withLock { n in
          n += 1
          return [UInt8(n)]
        }
      }
    }
    #expect((0..<3).map { _ in ask().fresh } == [true, true, true])
    let repeated = ask()
    #expect(!repeated.fresh && repeated.bytes == [3], "the third render, again")
    clock.advance(.milliseconds(999))
    #expect(!ask().fresh)
    clock.advance(.milliseconds(1))
    let next = ask()
    #expect(next.fresh && next.bytes == [4], "a new second, a new budget")
    #expect(renders.withLock { $0 } == 4)
  }

  @Test func theFirstRequestIsAlwaysRendered() {
    let budget = MetricsRenderBudget(perSecond: 0)  // clamped to 1
    #expect(budget.body { [1] } == ([1], true))
    #expect(budget.body { [2] } == ([1], false))
  }
}
