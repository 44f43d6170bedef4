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
}
