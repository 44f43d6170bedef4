import Foundation
import PalisadeIdentity
import PalisadeTestSupport
import Testing
import X509

@testable import PalisadeTransport

/// The server's certificate and key as loaded at start and on rotation: bad files are refused with their path,
/// and a refused reload leaves the pair in force.
@Suite struct ServerCertificateStoreTests {
  private func serverPair(_ pki: TestPKI, _ name: String, notAfter: Date = Date().addingTimeInterval(86_400)) throws
    -> ServerCredentials
  {
    let issued = try pki.issue(commonName: name, sans: [.dnsName("localhost")], usage: .serverAuth, notAfter: notAfter)
    return ServerCredentials(
      certificateChainPath: try pki.write("\(name).pem", issued.chainPEM),
      privateKeyPath: try pki.write("\(name).key", issued.keyPEM, mode: 0o600))
  }

  @Test func loadsAndRotates() throws {
    let pki = try TestPKI()
    let first = try serverPair(pki, "server-1", notAfter: Date().addingTimeInterval(3_600))
    let store = try ServerCertificateStore(credentials: first)
    let firstDER = try #require(store.leafDER)
    let firstExpiry = try #require(store.leafNotAfter)
    #expect(abs(Double(firstExpiry) - Date().addingTimeInterval(3_600).timeIntervalSince1970) < 5)
    try store.reload(try serverPair(pki, "server-2"))
    #expect(store.leafDER != firstDER)
    #expect(store.chain.count == 2, "leaf and intermediate")
  }

  @Test func refusesAKeyThatDoesNotMatchAndKeepsTheOldPair() throws {
    let pki = try TestPKI()
    let good = try serverPair(pki, "server-1")
    let store = try ServerCertificateStore(credentials: good)
    let before = store.leafDER
    let other = try serverPair(pki, "server-2")
    let mixed = ServerCredentials(certificateChainPath: other.certificateChainPath, privateKeyPath: good.privateKeyPath)
    #expect {
      try store.reload(mixed)
    } throws: { error in
      "\(error)".contains(good.privateKeyPath) && "\(error)".contains("does not match the certificate")
    }
    #expect(store.leafDER == before)
  }

  @Test func refusesBadFilesNamingThem() throws {
    let pki = try TestPKI()
    let good = try serverPair(pki, "server-1")
    let notPEM = try pki.write("garbage.pem", "not a certificate\n")
    let empty = try pki.write("empty.pem", "")
    let openKey = try pki.write(
      "open.key", try String(contentsOfFile: good.privateKeyPath, encoding: .utf8), mode: 0o644)
    let cases: [(ServerCredentials, String, String)] = [
      (
        .init(certificateChainPath: notPEM, privateKeyPath: good.privateKeyPath), notPEM,
        "is not a PEM certificate chain"
      ),
      (.init(certificateChainPath: empty, privateKeyPath: good.privateKeyPath), empty, ""),
      (.init(certificateChainPath: good.certificateChainPath, privateKeyPath: notPEM), notPEM, ""),
      (
        .init(certificateChainPath: good.certificateChainPath, privateKeyPath: openKey), openKey,
        "accessible by group or others"
      ),
      (
        .init(certificateChainPath: good.certificateChainPath, privateKeyPath: pki.path("missing.key")), "missing.key",
        ""
      ),
    ]
    for (credentials, path, reason) in cases {
      #expect {
        _ = try ServerCertificateStore(credentials: credentials)
      } throws: { error in
        "\(error)".contains(path) && (reason.isEmpty || "\(error)".contains(reason))
      }
    }
  }
}
