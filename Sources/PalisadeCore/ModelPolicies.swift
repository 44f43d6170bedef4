/// How a model's outputs are hardened before they leave the server (the manifest's `output_policy`).
///
/// Applied to floating-point outputs whose last dimension holds per-class scores; other outputs pass unchanged
/// (label-only mode drops them instead, so that only labels leave).
public struct OutputPolicy: Sendable, Equatable {
  /// Keep only the k highest scores per row, sent as BYTES `"score:index[:label]"` (the OIP classification form).
  public var topK: Int?
  /// Round scores to this many decimal places.
  public var roundDecimals: Int?
  /// Send only the arg-max label per row (BYTES), no scores at all.
  public var labelOnly: Bool
  /// Pad every response to a multiple of this many bytes so that its size does not reveal its content.
  public var padToBucketBytes: Int?
  /// Class labels by index, from the manifest.
  public var labels: [String]?

  public init(
    topK: Int? = nil, roundDecimals: Int? = nil, labelOnly: Bool = false, padToBucketBytes: Int? = nil,
    labels: [String]? = nil
  ) {
    self.topK = topK
    self.roundDecimals = roundDecimals
    self.labelOnly = labelOnly
    self.padToBucketBytes = padToBucketBytes
    self.labels = labels
  }

  /// Outputs leave as computed.
  public static let passThrough = OutputPolicy()

  /// Whether any transformation applies to the tensors themselves.
  public var transformsTensors: Bool { topK != nil || roundDecimals != nil || labelOnly }
}

/// The reference statistics and rule for out-of-distribution screening (the manifest's `reference_statistics`
/// and `screening_policy`).
public struct ScreeningProfile: Sendable, Equatable {
  /// Statistics of one input's features (its last dimension) over the training data.
  public struct Reference: Sendable, Equatable {
    public var mean: [Double]
    public var std: [Double]
    /// Full covariance, row-major; when absent the diagonal (or `std²`) is used.
    public var covariance: [[Double]]?
    public var covarianceDiagonal: [Double]?

    public init(mean: [Double], std: [Double], covariance: [[Double]]? = nil, covarianceDiagonal: [Double]? = nil) {
      self.mean = mean
      self.std = std
      self.covariance = covariance
      self.covarianceDiagonal = covarianceDiagonal
    }
  }
  public enum Action: String, Sendable, Equatable {
    /// Serve the request, and mark it (response parameter, metric, log).
    case flag
    /// Refuse the request with INVALID_ARGUMENT.
    case reject
  }
  /// Per input name.
  public var references: [String: Reference]
  /// Mahalanobis distance above which a row is out of distribution; `nil` scores without acting.
  public var threshold: Double?
  public var action: Action

  public init(references: [String: Reference] = [:], threshold: Double? = nil, action: Action = .flag) {
    self.references = references
    self.threshold = threshold
    self.action = action
  }

  /// No reference statistics: nothing to score.
  public static let none = ScreeningProfile()
}
