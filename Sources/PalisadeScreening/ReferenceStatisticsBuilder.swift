import Foundation
public import PalisadeCore

/// Computes a bundle's reference statistics from a sample of training inputs (publisher side, `palisade bundle
/// stats`), and suggests an out-of-distribution threshold scored exactly as the server will score requests.
public struct ReferenceStatisticsBuilder: Sendable {
  /// Rows × features, row-major.
  public struct Sample: Sendable {
    public var rows: Int
    public var features: Int
    public var values: [Double]
    public init(rows: Int, features: Int, values: [Double]) {
      self.rows = rows
      self.features = features
      self.values = values
    }
  }

  /// What `bundle stats` reports.
  public struct Result: Sendable {
    public var reference: ScreeningProfile.Reference
    /// 1.25 × the 99.9th percentile of the sample's own Mahalanobis distances.
    public var suggestedThreshold: Double
    public var rows: Int
    public var min: [Double]
    public var max: [Double]
  }

  public enum Covariance: String, Sendable, CaseIterable { case diagonal, full }

  public init() {}

  /// Mean, standard deviation and covariance (diagonal or full) of `sample`.
  public func build(_ sample: Sample, covariance: Covariance) throws(SampleFileError) -> Result {
    let n = sample.rows
    let k = sample.features
    guard n >= 2, k >= 1 else { throw SampleFileError("needs at least 2 rows and 1 feature, got \(n)×\(k)") }
    guard k <= 4096 || covariance == .diagonal else {
      throw SampleFileError("full covariance needs at most 4096 features")
    }
    var mean = [Double](repeating: 0, count: k)
    var lo = [Double](repeating: .infinity, count: k)
    var hi = [Double](repeating: -.infinity, count: k)
    for r in 0..<n {
      for j in 0..<k {
        let v = sample.values[r * k + j]
        guard v.isFinite else { throw SampleFileError("row \(r + 1), feature \(j): not a finite number") }
        mean[j] += v
        lo[j] = Swift.min(lo[j], v)
        hi[j] = Swift.max(hi[j], v)
      }
    }
    for j in 0..<k { mean[j] /= Double(n) }
    var reference: ScreeningProfile.Reference
    switch covariance {
    case .diagonal:
      var variance = [Double](repeating: 0, count: k)
      for r in 0..<n {
        for j in 0..<k {
          let d = sample.values[r * k + j] - mean[j]
          variance[j] += d * d
        }
      }
      variance = variance.map { $0 / Double(n - 1) }
      reference = .init(mean: mean, std: variance.map { $0.squareRoot() }, covarianceDiagonal: variance)
    case .full:
      var cov = [[Double]](repeating: [Double](repeating: 0, count: k), count: k)
      var d = [Double](repeating: 0, count: k)
      for r in 0..<n {
        for j in 0..<k { d[j] = sample.values[r * k + j] - mean[j] }
        for i in 0..<k { for j in i..<k { cov[i][j] += d[i] * d[j] } }
      }
      for i in 0..<k {
        for j in i..<k {
          cov[i][j] /= Double(n - 1)
          cov[j][i] = cov[i][j]
        }
      }
      reference = .init(mean: mean, std: (0..<k).map { cov[$0][$0].squareRoot() }, covariance: cov)
    }
    let scorer = OODScorer(ScreeningProfile(references: ["x": reference]))
    guard let compiled = scorer.inputs["x"] else { throw SampleFileError("statistics could not be compiled") }
    let distances = scorer.rowDistances(sample.values, features: k, compiled).sorted()
    let index = Swift.min(distances.count - 1, Int((Double(distances.count) * 0.999).rounded(.up)) - 1)
    let threshold = 1.25 * distances[Swift.max(0, index)]
    return Result(reference: reference, suggestedThreshold: threshold, rows: n, min: lo, max: hi)
  }
}

/// A problem with a sample file, naming the file and what is wrong.
public struct SampleFileError: Error, CustomStringConvertible, Sendable {
  public var description: String
  public init(_ description: String) { self.description = description }
}

/// Reads a sample of inputs from NumPy `.npy` (little-endian float32/float64/int/uint, C order, any shape with at
/// least one dimension: the first is rows, the rest are flattened into features) or CSV (numbers only, an optional
/// header row, every row the same width).
public enum SampleFile {
  public static func read(path: String) throws(SampleFileError) -> ReferenceStatisticsBuilder.Sample {
    let data: Data
    do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
      throw SampleFileError("\(path): cannot be read")
    }
    let bytes = [UInt8](data)
    do {
      if bytes.starts(with: [0x93] + Array("NUMPY".utf8)) { return try npy(bytes) }
      return try csv(String(decoding: bytes, as: UTF8.self))
    } catch {
      throw SampleFileError("\(path): \(error.description)")
    }
  }

  static func npy(_ b: [UInt8]) throws(SampleFileError) -> ReferenceStatisticsBuilder.Sample {
    guard b.count >= 10 else { throw SampleFileError("truncated .npy header") }
    let major = b[6]
    let headerLength: Int
    let start: Int
    if major == 1 {
      headerLength = Int(b[8]) | Int(b[9]) << 8
      start = 10
    } else if major == 2 || major == 3, b.count >= 12 {
      headerLength = Int(b[8]) | Int(b[9]) << 8 | Int(b[10]) << 16 | Int(b[11]) << 24
      start = 12
    } else {
      throw SampleFileError("unsupported .npy version \(major)")
    }
    guard start + headerLength <= b.count else { throw SampleFileError("truncated .npy header") }
    let header = String(decoding: b[start..<(start + headerLength)], as: UTF8.self)
    func field(_ key: String) -> String? {
      guard let r = header.range(of: "'\(key)':") else { return nil }
      return String(header[r.upperBound...]).trimmingCharacters(in: .whitespaces)
    }
    guard let descrField = field("descr"), let q1 = descrField.dropFirst().firstIndex(of: "'") else {
      throw SampleFileError("no dtype in .npy header")
    }
    let descr = String(descrField[descrField.index(after: descrField.startIndex)..<q1])
    guard let fortran = field("fortran_order"), fortran.hasPrefix("False") else {
      throw SampleFileError("Fortran-ordered arrays are not supported; save with np.ascontiguousarray")
    }
    guard let shapeField = field("shape"), let open = shapeField.firstIndex(of: "("),
      let close = shapeField.firstIndex(of: ")")
    else {
      throw SampleFileError("no shape in .npy header")
    }
    let dims = shapeField[shapeField.index(after: open)..<close].split(separator: ",").compactMap {
      Int($0.trimmingCharacters(in: .whitespaces))
    }
    guard let rows = dims.first, rows > 0 else { throw SampleFileError("the array needs at least one row") }
    var features = 1
    for d in dims.dropFirst() {
      guard d > 0, features.multipliedReportingOverflow(by: d).overflow == false else {
        throw SampleFileError("bad shape")
      }
      features *= d
    }
    let width: Int
    let convert: (ArraySlice<UInt8>) -> Double
    switch descr {
    case "<f4":
      width = 4
      convert = { Double(Float(bitPattern: le32($0))) }
    case "<f8":
      width = 8
      convert = { Double(bitPattern: le64($0)) }
    case "<i4":
      width = 4
      convert = { Double(Int32(bitPattern: le32($0))) }
    case "<i8":
      width = 8
      convert = { Double(Int64(bitPattern: le64($0))) }
    case "|u1", "<u1":
      width = 1
      convert = { Double($0.first ?? 0) }
    case "|i1", "<i1":
      width = 1
      convert = { Double(Int8(bitPattern: $0.first ?? 0)) }
    default:
      throw SampleFileError("dtype '\(descr)' is not supported (use float32, float64, int32, int64, uint8 or int8)")
    }
    let (count, o1) = rows.multipliedReportingOverflow(by: features)
    let (total, o2) = count.multipliedReportingOverflow(by: width)
    let dataStart = start + headerLength
    guard !o1, !o2, b.count - dataStart == total else {
      throw SampleFileError("data size does not match shape \(dims) of \(descr)")
    }
    var values = [Double]()
    values.reserveCapacity(count)
    var i = dataStart
    while i < b.count {
      values.append(convert(b[i..<(i + width)]))
      i += width
    }
    return .init(rows: rows, features: features, values: values)
  }

  static func csv(_ text: String) throws(SampleFileError) -> ReferenceStatisticsBuilder.Sample {
    var values: [Double] = []
    var features: Int? = nil
    var rows = 0
    for (n, line) in text.split(whereSeparator: \.isNewline).enumerated() {
      let trimmed = line.trimmingCharacters(in: .whitespaces)
      if trimmed.isEmpty { continue }
      let cells = trimmed.split(separator: ",", omittingEmptySubsequences: false).map {
        $0.trimmingCharacters(in: .whitespaces)
      }
      let numbers = cells.compactMap(Double.init)
      if numbers.count != cells.count {
        if rows == 0 && features == nil && n == 0 { continue }  // a header row
        throw SampleFileError("line \(n + 1): not all cells are numbers")
      }
      if let f = features, f != numbers.count {
        throw SampleFileError("line \(n + 1): \(numbers.count) columns, earlier rows have \(f)")
      }
      features = numbers.count
      values += numbers
      rows += 1
    }
    guard let features, rows > 0 else { throw SampleFileError("no rows of numbers") }
    return .init(rows: rows, features: features, values: values)
  }
}

private func le32(_ s: ArraySlice<UInt8>) -> UInt32 {
  s.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
}

private func le64(_ s: ArraySlice<UInt8>) -> UInt64 {
  s.reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
}
