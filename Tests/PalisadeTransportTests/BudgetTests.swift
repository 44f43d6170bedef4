import Testing

@testable import PalisadeTransport

/// The pre-authentication caps and the in-flight byte budgets: the limits that hold before a caller is known.
@Suite struct BudgetTests {
  @Test func connectionLimiterCapsTotalAndPerAddress() {
    let limiter = ConnectionLimiter(maxTotal: 3, maxPerAddress: 2)
    #expect(limiter.admit("10.0.0.1") == nil)
    #expect(limiter.admit("10.0.0.1") == nil)
    #expect(limiter.admit("10.0.0.1") == .perAddress, "a third from one address")
    #expect(limiter.admit("10.0.0.2") == nil)
    #expect(limiter.admit("10.0.0.3") == .total, "a fourth in total")
    #expect(limiter.open == 3)
    #expect(limiter.release("10.0.0.1") == 2)
    #expect(limiter.admit("10.0.0.1") == nil, "a released slot is free again")
    #expect(limiter.admit("10.0.0.3") == .total)
  }

  @Test func refusalsNameTheirSetting() {
    #expect(ConnectionLimiter.Refusal.total.rawValue == "max_connections")
    #expect(ConnectionLimiter.Refusal.perAddress.rawValue == "max_connections_per_address")
  }

  @Test func connectionLimiterHoldsUnderConcurrency() async {
    let limiter = ConnectionLimiter(maxTotal: 50, maxPerAddress: 1000)
    let admitted = await withTaskGroup(of: Bool.self) { group in
      for _ in 0..<200 { group.addTask { limiter.admit("10.0.0.9") == nil } }
      return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
    }
    #expect(admitted == 50)
    #expect(limiter.open == 50)
  }

  @Test func inflightBudgetRefusesWithoutCharging() {
    let budget = InflightBudget(limit: 100)
    #expect(budget.charge(60, to: "a"))
    #expect(!budget.charge(41, to: "a"), "over the limit")
    #expect(budget.inUse("a") == 60, "a refused charge leaves nothing behind")
    #expect(budget.charge(40, to: "a"))
    #expect(budget.charge(100, to: "b"), "keys are budgeted apart")
    budget.release(100, from: "a")
    #expect(budget.inUse("a") == 0)
    budget.release(5, from: "a")
    #expect(budget.inUse("a") == 0, "over-release does not go negative")
    #expect(budget.charge(100, to: "a"))
    #expect(!budget.charge(Int.max, to: "c"), "no overflow on huge charges")
  }

  @Test func callBudgetRefillsAtItsRateUpToItsBurst() {
    let budget = CallBudget(perSecond: 10, burst: 3)
    let t0 = ContinuousClock.now
    #expect(budget.take("spiffe://td/a", now: t0))
    #expect(budget.take("spiffe://td/a", now: t0))
    #expect(budget.take("spiffe://td/a", now: t0))
    #expect(!budget.take("spiffe://td/a", now: t0), "the burst is spent")
    #expect(budget.take("spiffe://td/b", now: t0), "another principal has its own budget")
    #expect(!budget.take("spiffe://td/a", now: t0 + .milliseconds(50)), "half a call refilled is not a call")
    #expect(budget.take("spiffe://td/a", now: t0 + .milliseconds(100)), "one call a tenth of a second")
    #expect(!budget.take("spiffe://td/a", now: t0 + .milliseconds(100)))
    #expect(budget.left("spiffe://td/a", now: t0 + .seconds(60)) == 3, "never more than the burst")
  }

  @Test func aRefusedTakeChargesNothingAndARefundGivesOneBack() {
    let budget = CallBudget(perSecond: 1, burst: 2)
    let t0 = ContinuousClock.now
    #expect(budget.take("k", now: t0) && budget.take("k", now: t0))
    for _ in 0..<100 { #expect(!budget.take("k", now: t0)) }
    #expect(budget.left("k", now: t0 + .seconds(1)) == 1, "refusals did not run the bucket into debt")
    budget.refund("k")
    budget.refund("k")
    budget.refund("k")
    #expect(budget.left("k", now: t0 + .seconds(1)) == 2, "refunds stop at the burst")
    budget.refund("never-seen")
    #expect(budget.tracked == 1, "a refund for an unknown key creates nothing")
  }

  @Test func fullBucketsAreForgottenSoTheTableStaysBounded() {
    let budget = CallBudget(perSecond: 1000, burst: 10)
    let t0 = ContinuousClock.now
    for i in 0..<5000 { #expect(budget.take("p\(i)", now: t0)) }
    #expect(budget.tracked == 5000, "none full yet, none forgotten")
    // A second later those are full again; the next prune (the table doubled) forgets them.
    for i in 0..<4000 { #expect(budget.take("q\(i)", now: t0 + .seconds(1))) }
    #expect(budget.tracked < 5000, "full buckets pruned: \(budget.tracked)")
    #expect(budget.left("p1", now: t0 + .seconds(1)) == 10, "a forgotten principal starts full, as it would have been")
  }
}
