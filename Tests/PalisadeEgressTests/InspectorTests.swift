import Crypto
import Foundation
import NIOCore
import PalisadeEgress
import PalisadeYAML
import Testing

@Suite("Egress inspection and policy units")
struct InspectorTests {
  static func inspector(
    _ configure: (inout EgressConfig.Inspection) -> Void = { _ in }, canaries: [String] = [], weights: [UInt8]? = nil
  ) -> Inspector {
    var s = EgressConfig.Inspection()
    configure(&s)
    var index: WeightIndex?
    if let weights {
      var b = WeightIndex.Builder(window: s.weights.windowBytes, stride: s.weights.strideBytes, minDistinctBytes: 16)
      weights.withUnsafeBytes { b.add($0, source: "bundle test v1 (w.bin)") }
      index = b.build()
    }
    return Inspector(settings: s, canaries: canaries.map { Canary($0, source: "test") }, weights: index)
  }

  static func random(_ n: Int) -> [UInt8] {
    var g = SystemRandomNumberGenerator()
    return (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
  }

  @Test("every leaked run of W+S-1 weight bytes is found, at every offset; shorter runs and other bytes are not")
  func weightWindows() {
    let weights = Self.random(8192)
    let i = Self.inspector(weights: weights)
    for start in stride(from: 0, to: 8192 - 95, by: 7) {
      let f = i.inspect(uri: "/", headers: [], body: [0x00] + Array(weights[start..<(start + 95)]) + [0xff])
      #expect(f?.reason == .modelWeights, "offset \(start)")
    }
    #expect(i.inspect(uri: "/", headers: [], body: Array(weights[5..<(5 + 63)])) == nil)
    #expect(i.inspect(uri: "/", headers: [], body: Self.random(100_000)) == nil)
  }

  @Test("constant windows of a weight file (zero padding) are not fingerprinted")
  func zeroPadding() {
    let weights = Self.random(1024) + [UInt8](repeating: 0, count: 4096) + Self.random(1024)
    let i = Self.inspector(weights: weights)
    #expect(i.inspect(uri: "/", headers: [], body: [UInt8](repeating: 0, count: 10_000)) == nil)
  }

  @Test("base64 with line breaks and base64url are decoded at every alignment")
  func base64() {
    let weights = Self.random(4096)
    let i = Self.inspector({ $0.highEntropy.enabled = false }, weights: weights)
    let chunk = Data(weights[300..<700])
    let wrapped = chunk.base64EncodedString(options: [.lineLength76Characters, .endLineWithCarriageReturn, .endLineWithLineFeed])
    #expect(i.inspect(uri: "/", headers: [], body: Array("x=\(wrapped)".utf8))?.reason == .modelWeights)
    let url = chunk.base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
    for prefix in ["", "a", "ab", "abc"] {
      #expect(i.inspect(uri: "/", headers: [], body: Array("\"\(prefix)\(url)\"".utf8))?.reason == .modelWeights)
    }
  }

  @Test("configured secret fingerprints match whole tokens and key=value values")
  func secretFingerprints() {
    let secret = "s3cr3t-database-password"
    let digest = SHA256.hash(data: Data(secret.utf8)).map { String(format: "%02x", $0) }.joined()
    let i = Self.inspector({ $0.secretSHA256 = [digest] })
    #expect(i.inspect(uri: "/", headers: [], body: Array("{\"p\": \"\(secret)\"}".utf8))?.reason == .secret)
    #expect(i.inspect(uri: "/?password=\(secret)", headers: [], body: [])?.reason == .secret)
    #expect(i.inspect(uri: "/", headers: [], body: Array("s3cr3t-database".utf8)) == nil)
  }

  @Test("long high-entropy runs are refused; ordinary text and short base64 pass")
  func entropy() {
    let i = Self.inspector()
    let blob = Data(Self.random(1024)).base64EncodedString()
    #expect(i.inspect(uri: "/", headers: [], body: Array(blob.utf8))?.reason == .highEntropy)
    let hex = Self.random(600).map { String(format: "%02x", $0) }.joined()
    #expect(i.inspect(uri: "/", headers: [], body: Array(hex.utf8))?.reason == .highEntropy)
    let text = String(repeating: "The checkpoint for tree size 1234 has root hash abcdef. ", count: 200)
    #expect(i.inspect(uri: "/", headers: [], body: Array(text.utf8)) == nil)
    let signature = Data(Self.random(64)).base64EncodedString()
    #expect(i.inspect(uri: "/", headers: [], body: Array("{\"sig\":\"\(signature)\"}".utf8)) == nil)
  }

  @Test("PEM key variants and JWTs are found; certificates and dotted words are not")
  func pemAndJWT() {
    let i = Self.inspector()
    for kind in ["", "RSA ", "EC ", "OPENSSH ", "ENCRYPTED "] {
      let body = "-----BEGIN \(kind)PRIVATE KEY-----\nMIIB\n-----END \(kind)PRIVATE KEY-----"
      #expect(i.inspect(uri: "/", headers: [], body: Array(body.utf8))?.reason == .privateKey, "\(kind)")
    }
    #expect(i.inspect(uri: "/", headers: [], body: Array("-----BEGIN CERTIFICATE-----\nMIIB".utf8)) == nil)
    let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIiwiZXhwIjoxfQ.c2lnbmF0dXJl"
    #expect(i.inspect(uri: "/", headers: [("authorization", "Bearer \(jwt)")], body: [])?.reason == .jwt)
    #expect(i.inspect(uri: "/", headers: [], body: Array("see eyJ.foo.bar and a.b.c".utf8)) == nil)
  }

  @Test("address classes: private, loopback, link-local, CGNAT, ULA, multicast, metadata, mapped")
  func addressClasses() throws {
    func cls(_ ip: String) throws -> AddressClass { AddressClass.of(try SocketAddress(ipAddress: ip, port: 1)) }
    #expect(try cls("8.8.8.8") == .global)
    #expect(try cls("127.0.0.1") == .loopback)
    #expect(try cls("10.1.2.3") == .privateUse)
    #expect(try cls("172.20.0.1") == .privateUse)
    #expect(try cls("192.168.1.1") == .privateUse)
    #expect(try cls("100.100.0.1") == .privateUse)
    #expect(try cls("169.254.1.1") == .linkLocal)
    #expect(try cls("169.254.169.254") == .metadata)
    #expect(try cls("224.0.0.1") == .multicast)
    #expect(try cls("0.0.0.0") == .unspecified)
    #expect(try cls("::1") == .loopback)
    #expect(try cls("fe80::1") == .linkLocal)
    #expect(try cls("fd12::1") == .privateUse)
    #expect(try cls("fd00:ec2::254") == .metadata)
    #expect(try cls("ff02::1") == .multicast)
    #expect(try cls("::ffff:127.0.0.1") == .loopback)
    #expect(try cls("::ffff:169.254.169.254") == .metadata)
    #expect(try cls("2606:4700::1111") == .global)
  }

  @Test("the example config parses; mistakes are refused with key path and line")
  func config() throws {
    let example = try EgressConfig.load(path: "\(repositoryRoot)/deploy/egress.example.yaml")
    #expect(example.listen.port == 3128 && example.destinations.count == 2)
    #expect(example.destinations[0].methods == ["POST"] && example.destinations[0].byteBudget?.bytes == 104_857_600)
    #expect(EgressConfig().destinations.isEmpty)
    func failure(_ yaml: String) -> YAMLError? {
      do {
        _ = try EgressConfig.parse(yaml, file: "e.yaml")
        return nil
      } catch { return error }
    }
    let unknown = failure("listen:\n  host: 127.0.0.1\n  prot: 1\n")
    #expect(unknown?.path == "listen.prot" && unknown?.line == 3)
    #expect(failure("destinations:\n  - {host: a.example, methods: [FETCH]}\n")?.path == "destinations[0].methods")
    #expect(failure("destinations:\n  - {host: '*.example'}\n")?.path == "destinations[0].host")
    #expect(failure("inspection:\n  canary_tokens: [short]\n")?.path == "inspection.canary_tokens")
    #expect(failure("inspection:\n  secret_sha256: [abc]\n")?.path == "inspection.secret_sha256")
    #expect(failure("alert_webhook: https://nowhere.example/x\n")?.path == "alert_webhook")
    #expect(failure("tls:\n  client_certificate: c.pem\n")?.path == "tls.client_certificate")
  }
}
