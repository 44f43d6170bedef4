import Crypto
import Foundation
import Testing

@testable import PalisadeAudit

func unhex(_ s: String) -> [UInt8] {
  var out: [UInt8] = []
  var it = s.makeIterator()
  while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16) ?? 0) }
  return out
}

func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined() }

/// Known answers: the certificate-transparency test data (google/certificate-transparency merkle tests;
/// also used by transparency-dev/merkle and RFC 9162 implementations).
@Suite struct MerkleTests {
  static let data: [[UInt8]] = [
    "", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f",
  ].map(unhex)
  static let roots = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
  ]
  static let inclusion: [(UInt64, UInt64, [String])] = [
    (0, 1, []),
    (
      0, 8,
      [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
      ]
    ),
    (
      5, 8,
      [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
      ]
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
      1, 5,
      [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
      ]
    ),
  ]
  static let consistency: [(UInt64, UInt64, [String])] = [
    (1, 1, []),
    (
      1, 8,
      [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
      ]
    ),
    (
      6, 8,
      [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
      ]
    ),
    (
      2, 5,
      [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
      ]
    ),
  ]

  func store(_ n: Int) -> MerkleTreeStore {
    var s = MerkleTreeStore()
    for d in Self.data.prefix(n) { s.append(leafHash: Merkle.leafHash(d)) }
    return s
  }

  @Test func rootsMatchThePublishedVectors() {
    let full = store(8)
    var compact = CompactRange()
    #expect(hex(compact.root) == Self.roots[0])
    for n in 0...8 {
      #expect(hex(full.root(treeSize: UInt64(n)) ?? []) == Self.roots[n], "size \(n)")
      #expect(
        hex(Merkle.root(leafHashes: ArraySlice(Self.data.prefix(n).map { Merkle.leafHash($0) }))) == Self.roots[n])
      if n > 0 {
        compact.append(leafHash: Merkle.leafHash(Self.data[n - 1]))
        #expect(hex(compact.root) == Self.roots[n], "compact range, size \(n)")
      }
    }
  }

  @Test func inclusionProofsMatchThePublishedVectors() {
    let full = store(8)
    for (index, size, expected) in Self.inclusion {
      let proof = full.inclusionProof(index: index, treeSize: size)
      #expect(proof?.map(hex) == expected, "PATH(\(index), D[\(size)])")
      #expect(
        Merkle.verifyInclusion(
          leafHash: full.leafHash(index), index: index, treeSize: size, proof: expected.map(unhex),
          root: unhex(Self.roots[Int(size)])))
    }
  }

  @Test func consistencyProofsMatchThePublishedVectors() {
    let full = store(8)
    for (first, second, expected) in Self.consistency {
      #expect(
        full.consistencyProof(first: first, second: second)?.map(hex) == expected, "PROOF(\(first), D[\(second)])")
      #expect(
        Merkle.verifyConsistency(
          firstSize: first, firstRoot: unhex(Self.roots[Int(first)]), secondSize: second,
          secondRoot: unhex(Self.roots[Int(second)]),
          proof: expected.map(unhex)))
    }
  }

  @Test func everyProofUpTo70LeavesVerifiesAndTamperingFails() {
    var s = MerkleTreeStore()
    var compact = CompactRange()
    var leaves: [[UInt8]] = []
    for i in 0..<70 {
      let leaf = Merkle.leafHash(Array("leaf-\(i)".utf8))
      leaves.append(leaf)
      s.append(leafHash: leaf)
      compact.append(leafHash: leaf)
      #expect(compact.root == Merkle.root(leafHashes: leaves[...]))
    }
    for n in UInt64(1)...70 {
      let root = s.root(treeSize: n) ?? []
      #expect(root == Merkle.root(leafHashes: leaves[0..<Int(n)]))
      for m in 0..<n {
        let proof = s.inclusionProof(index: m, treeSize: n) ?? []
        #expect(Merkle.verifyInclusion(leafHash: leaves[Int(m)], index: m, treeSize: n, proof: proof, root: root))
        if n > 1 {
          #expect(
            !Merkle.verifyInclusion(leafHash: leaves[Int(m)], index: (m + 1) % n, treeSize: n, proof: proof, root: root)
          )
          #expect(
            !Merkle.verifyInclusion(leafHash: leaves[Int((m + 1) % n)], index: m, treeSize: n, proof: proof, root: root)
          )
          var bad = proof
          bad[0][0] ^= 1
          #expect(!Merkle.verifyInclusion(leafHash: leaves[Int(m)], index: m, treeSize: n, proof: bad, root: root))
          #expect(
            !Merkle.verifyInclusion(
              leafHash: leaves[Int(m)], index: m, treeSize: n, proof: proof.dropLast(), root: root))
        }
        if m > 0 {
          let first = m
          let c = s.consistencyProof(first: first, second: n) ?? []
          let firstRoot = s.root(treeSize: first) ?? []
          #expect(
            Merkle.verifyConsistency(firstSize: first, firstRoot: firstRoot, secondSize: n, secondRoot: root, proof: c),
            "\(first)->\(n)")
          #expect(
            !Merkle.verifyConsistency(firstSize: first, firstRoot: root, secondSize: n, secondRoot: root, proof: c)
              || first == n)
          if !c.isEmpty {
            var bad = c
            bad[bad.count - 1][5] ^= 0x40
            #expect(
              !Merkle.verifyConsistency(
                firstSize: first, firstRoot: firstRoot, secondSize: n, secondRoot: root, proof: bad))
          }
        }
      }
      #expect(!Merkle.verifyInclusion(leafHash: leaves[0], index: n, treeSize: n, proof: [], root: root))
    }
    #expect(
      Merkle.verifyConsistency(
        firstSize: 0, firstRoot: Merkle.emptyRoot, secondSize: 5, secondRoot: s.root(treeSize: 5) ?? [], proof: []))
    #expect(
      !Merkle.verifyConsistency(
        firstSize: 8, firstRoot: s.root(treeSize: 8) ?? [], secondSize: 6, secondRoot: s.root(treeSize: 6) ?? [],
        proof: []))
  }

  @Test func crc32cKnownAnswer() {
    #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
  }
}

@Suite struct RecordTests {
  @Test func canonicalJSONIsSortedCompactAndRoundTrips() throws {
    var r = AuditRecord(
      kind: .modelRefused, time: Date(timeIntervalSince1970: 1_764_220_087.123456),
      principal: "spiffe://td/a\"b\\c\n\u{1}é",
      model: "digits", status: "FAILED_PRECONDITION", reason: "signature", latencyMicros: -5,
      details: ["z": "1", "a": "2"])
    r.timeMicros = 1_764_220_087_123_456
    let json = String(decoding: r.canonicalJSON(), as: UTF8.self)
    #expect(
      json
        == #"{"details":{"a":"2","z":"1"},"kind":"model_refused","latency_us":-5,"model":"digits","principal":"spiffe://td/a\"b\\c\n\u0001é","reason":"signature","status":"FAILED_PRECONDITION","time":"2025-11-27T05:08:07.123456Z"}"#
    )
    #expect(try AuditRecord.decodeCanonical(r.canonicalJSON()) == r)
    // Also what JSONEncoder/JSONDecoder make of it (Codable).
    let decoded = try JSONDecoder().decode(AuditRecord.self, from: try JSONEncoder().encode(r))
    #expect(decoded == r)
    #expect(
      AuditRecord.Kind("egress_block") == .egressBlock && AuditRecord.Kind("future_kind") == .other("future_kind"))
  }

  @Test func sha256HexIsLowercaseHex() {
    #expect(
      AuditRecord.sha256Hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  }

  @Test func keysAreWrittenInByteOrder() {
    #expect(AuditRecord.keyOrder == AuditRecord.keyOrder.sorted { $0.utf8.lexicographicallyPrecedes($1.utf8) })
    #expect(Set(AuditRecord.keyOrder) == Set(AuditRecord.CodingKeys.allCases.map(\.rawValue)))
    let full = AuditRecord(
      kind: .call, principal: "p", certificateThumbprint: "c", tokenID: "t", rpc: "r", model: "m", version: "v",
      manifestDigest: "d", inputSHA256: "i", outputSHA256: "o", status: "s", reason: "why", latencyMicros: 1,
      requestID: "q",
      details: ["k": "v"])
    let object = (try? JSONSerialization.jsonObject(with: Data(full.canonicalJSON()))) as? [String: Any]
    #expect(object?.count == AuditRecord.keyOrder.count)
    #expect((try? AuditRecord.decodeCanonical(full.canonicalJSON())) == full)
  }

  @Test func nonCanonicalFormsAreRefused() {
    for text in [
      #"{"kind":"call", "time":"2025-11-27T05:08:07.123456Z"}"#,
      #"{"time":"2025-11-27T05:08:07.123456Z","kind":"call"}"#,
      #"{"kind":"call","time":"2025-11-27T05:08:07.123456Z","extra":"x"}"#,
      #"{"kind":"call","time":"2025-11-27T05:08:07Z"}"#,
      #"{"kind":"call","time":"2025-02-31T05:08:07.123456Z"}"#,
      #"{"kind":"call"}"#,
    ] {
      #expect(throws: AuditError.self, "\(text)") { try AuditRecord.decodeCanonical(Array(text.utf8)) }
    }
    #expect(
      (try? AuditRecord.decodeCanonical(Array(#"{"kind":"call","time":"2025-11-27T05:08:07.123456Z"}"#.utf8))) != nil)
  }

  @Test func timeFormatIsExact() {
    for micros: Int64 in [0, 1, 999_999, 951_782_400_000_000, 4_102_444_799_999_999, 1_709_164_800_000_001] {
      let s = RFC3339Micros.format(micros)
      #expect(RFC3339Micros.parse(s) == micros, "\(s)")
    }
    #expect(RFC3339Micros.format(951_782_400_000_000) == "2000-02-29T00:00:00.000000Z")
  }
}
