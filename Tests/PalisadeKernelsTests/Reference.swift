#if canImport(Glibc)
  import Glibc
#elseif canImport(Darwin)
  import Darwin
#endif

// Double-precision references from the C library.
func erfRef(_ x: Double) -> Double { erf(x) }
func expRef(_ x: Double) -> Double { exp(x) }
func tanhRef(_ x: Double) -> Double { tanh(x) }
func powRef(_ x: Double, _ y: Double) -> Double { pow(x, y) }
