import Testing
import PalisadeKernels
import PalisadeCPUCheck

@Suite("Worker pool")
struct WorkerPoolTests {
  @Test("parallelFor runs every index exactly once", arguments: [1, 2, 4])
  func coversIndices(threads: Int) {
    let pool = WorkerPool(threadCount: threads)
    #expect(pool.threadCount == threads)
    for count in [0, 1, 2, 3, 17, 1000] {
      var hits = [Int](repeating: 0, count: count)
      hits.withUnsafeMutableBufferPointer { h in
        let base = h.baseAddress
        pool.parallelFor(count) { i in base?[i] += 1 }  // distinct indices: no race
      }
      #expect(hits.allSatisfy { $0 == 1 }, "count \(count)")
    }
  }

  @Test("context form of parallelFor", arguments: [1, 2])
  func contextForm(threads: Int) {
    let pool = WorkerPool(threadCount: threads)
    var hits = [Int](repeating: 0, count: 37)
    hits.withUnsafeMutableBufferPointer { h in
      guard let base = h.baseAddress else { return }
      pool.parallelFor(37, context: UnsafeRawPointer(base)) { context, i in
        UnsafeMutablePointer(mutating: context.assumingMemoryBound(to: Int.self))[i] += i
      }
    }
    #expect(hits == Array(0..<37))
  }

  @Test("nested parallelFor runs serially instead of deadlocking")
  func nested() {
    let pool = WorkerPool(threadCount: 2)
    var hits = [Int](repeating: 0, count: 16)
    hits.withUnsafeMutableBufferPointer { h in
      let base = h.baseAddress
      pool.parallelFor(4) { i in
        pool.parallelFor(4) { j in base?[i * 4 + j] += 1 }
      }
    }
    #expect(hits.allSatisfy { $0 == 1 })
  }

  @Test("run executes on the pool and resumes the task")
  func asyncRun() async throws {
    let pool = WorkerPool(threadCount: 2)
    let value = try await pool.run { 6 * 7 }
    #expect(value == 42)
    // Many concurrent submissions, each doing a pooled GEMM.
    try await withThrowingTaskGroup(of: Float.self) { group in
      for t in 0..<8 {
        group.addTask {
          try await pool.run {
            let n = 96
            let a = [Float](repeating: 1, count: n * n)
            let b = [Float](repeating: Float(t), count: n * n)
            var c = [Float](repeating: 0, count: n * n)
            sgemm(
              transA: false, transB: false, m: n, n: n, k: n, alpha: 1, a: a, lda: n, b: b, ldb: n,
              beta: 0, c: &c, ldc: n, pool: pool)
            return c[n * n - 1] - Float(n * t)
          }
        }
      }
      for try await residual in group { #expect(residual == 0) }
    }
  }

  @Test("errors from run propagate")
  func asyncError() async {
    struct Boom: Error {}
    let pool = WorkerPool(threadCount: 1)
    await #expect(throws: Boom.self) { try await pool.run { () throws -> Int in throw Boom() } }
  }

  @Test("the shared pool is sized to the machine")
  func shared() {
    #expect(WorkerPool.shared.threadCount == WorkerPool.availableCores())
  }

  @Test("CPU feature check passes on the build machine")
  func cpuFeatures() throws {
    try CPUFeatures.check()
    // An Ivy Bridge-class CPU (AVX but no AVX2/FMA/BMI) is rejected with a readable message.
    let ivyBridge: Set<String> = ["sse4_2", "popcnt", "avx", "f16c"]
    let missing = CPUFeatures.missingFeatures(given: ivyBridge)
    #expect(missing == ["avx2", "fma", "bmi1", "bmi2", "movbe", "abm"])
    #expect(CPUFeatures.Missing(features: missing).description.contains("avx2"))
  }
}
