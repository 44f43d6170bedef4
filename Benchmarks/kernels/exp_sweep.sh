#!/usr/bin/env bash
# Sweeps PalisadeKernels' vector exp (VMath.exp) over every third float in [-106, 90] against Foundation's exp
# rounded to Float and prints the worst relative error (normal results) and absolute error (subnormal results).
# VMath is internal, so its source is compiled here with a small driver (attributes stripped). ~1 minute.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
sed 's/^@usableFromInline$//; s/@usableFromInline //g; s/@inlinable //g' \
  "$root/Sources/PalisadeKernels/VectorMath.swift" > "$work/VectorMath.swift"
cat > "$work/main.swift" <<'SWIFT'
import Foundation
var worst = 0.0, at: Float = 0, worstSub = 0.0, mismatches = 0
func check(_ xs: [Float]) {
    var i = 0
    while i + 8 <= xs.count {
        let x = Float8(xs[i..<i + 8])
        let y = VMath.exp(x)
        for l in 0..<8 {
            let ref = Float(Foundation.exp(Double(x[l])))
            if ref.isNaN || ref.isInfinite {
                if !(ref.isNaN ? y[l].isNaN : y[l] == ref) { mismatches += 1 }
            } else if ref >= .leastNormalMagnitude {
                let e = abs(Double(y[l]) - Double(ref)) / Double(ref)
                if e > worst { worst = e; at = x[l] }
            } else {
                worstSub = max(worstSub, abs(Double(y[l]) - Double(ref)))
            }
        }
        i += 8
    }
}
var xs: [Float] = []
var b: UInt32 = 0
while b < 0x8000_0000 {
    let f = Float(bitPattern: b)
    if f > 106 { break }
    if f <= 90 { xs.append(f) }
    xs.append(-f)
    if xs.count >= 1 << 20 { check(xs); xs.removeAll(keepingCapacity: true) }
    b &+= 3
}
check(xs + [.infinity, -.infinity, .nan, 0, 0, 0, 0, 0])
print("exp: worst relative error \(worst) at x = \(at) (\(worst / 0x1p-23) x 2^-23); worst subnormal error \(worstSub / 0x1p-149) x 2^-149; inf/NaN mismatches \(mismatches)")
SWIFT
swiftc -O -target-cpu haswell "$work/main.swift" "$work/VectorMath.swift" -o "$work/exp-sweep" 2>/dev/null
"$work/exp-sweep"
