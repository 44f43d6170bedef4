import ArgumentParser
import Foundation

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

extension CallCommand {
  /// `palisade call health`: a plain-HTTP probe of the admin endpoint, for container health checks and Kubernetes
  /// exec probes. The gRPC port needs a client certificate and a token; the admin port needs neither, and the image
  /// has no shell or curl, so the binary probes itself.
  struct Health: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
      abstract: "Probe the admin endpoint over plain HTTP (no TLS); exit 0 on HTTP 200, 1 otherwise.",
      discussion: """
        For HEALTHCHECK and Kubernetes exec probes inside the container:
          palisade call health                                   (GET http://127.0.0.1:9464/healthz)
          palisade call health --url http://127.0.0.1:9464/readyz
        Only http:// URLs with a numeric address or localhost are accepted: the probe never resolves names.
        """
    )
    @Option(help: "The admin URL to GET (http://ADDRESS:PORT/PATH).")
    var url = "http://127.0.0.1:9464/healthz"
    @Option(help: "Seconds to wait for the answer (1 to 60).")
    var timeout = 3
    @Flag(help: "Print nothing; only the exit status tells.")
    var quiet = false

    func validate() throws {
      guard (1...60).contains(timeout) else {
        throw ValidationError("--timeout must be 1 to 60 seconds, got \(timeout)")
      }
      _ = try AdminURL(url)
    }

    func run() async throws {
      let target = try AdminURL(url)
      let answer: HTTPProbe.Answer
      do { answer = try HTTPProbe.get(target, timeoutSeconds: timeout) } catch {
        if !quiet { FileHandle.standardError.write(Data("palisade call health: \(url): \(error)\n".utf8)) }
        throw ExitCode(1)
      }
      if !quiet { print("\(answer.status) \(answer.firstBodyLine)") }
      if answer.status != 200 { throw ExitCode(1) }
    }
  }
}

/// An `http://host:port/path` URL with a numeric host (or `localhost`), as the health probe accepts it.
struct AdminURL: Equatable {
  var host: String
  var port: Int
  var path: String

  init(_ text: String) throws(ValidationError) {
    let prefix = "http://"
    guard text.hasPrefix(prefix) else {
      throw ValidationError("--url must start with http:// (the admin endpoint speaks plain HTTP), got '\(text)'")
    }
    let rest = text.dropFirst(prefix.count)
    let authority = rest.prefix { $0 != "/" }
    let path = rest.dropFirst(authority.count)
    var host: Substring
    var portText: Substring
    if authority.hasPrefix("["), let close = authority.firstIndex(of: "]") {
      host = authority[authority.index(after: authority.startIndex)..<close]
      let tail = authority[authority.index(after: close)...]
      guard tail.hasPrefix(":") else { throw ValidationError("--url needs a port: '\(text)'") }
      portText = tail.dropFirst()
    } else {
      guard let colon = authority.lastIndex(of: ":") else { throw ValidationError("--url needs a port: '\(text)'") }
      host = authority[..<colon]
      portText = authority[authority.index(after: colon)...]
    }
    if host == "localhost" { host = "127.0.0.1" }
    guard let port = Int(portText), (1...65_535).contains(port) else {
      throw ValidationError("--url needs a port from 1 to 65535: '\(text)'")
    }
    guard HTTPProbe.isNumeric(String(host)) else {
      throw ValidationError("--url host must be a numeric address or localhost (no name resolution): '\(text)'")
    }
    // The path goes into the request line as is: refuse anything that could break it.
    guard path.allSatisfy({ $0.isASCII && !$0.isWhitespace && $0 != "\r" && $0 != "\n" }) else {
      throw ValidationError("--url path must be printable ASCII without spaces: '\(text)'")
    }
    self.host = String(host)
    self.port = port
    self.path = path.isEmpty ? "/" : String(path)
  }
}

/// One blocking HTTP/1.0 GET over a plain socket: the probe must not need libcurl (which a static image lacks).
enum HTTPProbe {
  struct Answer {
    var status: Int
    var firstBodyLine: String
  }

  struct Failure: Error, CustomStringConvertible {
    var description: String
  }

  static func isNumeric(_ host: String) -> Bool {
    var v4 = in_addr()
    var v6 = in6_addr()
    return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
  }

  static func get(_ url: AdminURL, timeoutSeconds: Int) throws(Failure) -> Answer {
    var hints = addrinfo()
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV
    #if canImport(Glibc)
      hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    #else
      hints.ai_socktype = SOCK_STREAM
    #endif
    var list: UnsafeMutablePointer<addrinfo>?
    guard getaddrinfo(url.host, String(url.port), &hints, &list) == 0, let info = list else {
      throw Failure(description: "not a numeric address: \(url.host)")
    }
    defer { freeaddrinfo(list) }
    let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
    guard fd >= 0 else { throw Failure(description: "socket: \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
    _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
      // With SO_SNDTIMEO, a connect that times out fails with EINPROGRESS.
      if errno == EINPROGRESS || errno == EAGAIN {
        throw Failure(description: "connect: timed out after \(timeoutSeconds)s")
      }
      throw Failure(description: "connect: \(String(cString: strerror(errno)))")
    }
    let request = Array(
      "GET \(url.path) HTTP/1.0\r\nHost: \(url.host):\(url.port)\r\nUser-Agent: palisade-probe\r\n\r\n".utf8)
    var sent = 0
    while sent < request.count {
      let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
      guard n > 0 else { throw Failure(description: "send: \(String(cString: strerror(errno)))") }
      sent += n
    }
    // Health answers are tiny; read at most 64 KiB (HTTP/1.0: the server closes when done).
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 4096)
    while response.count < 65_536 {
      let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
      if n == 0 { break }
      guard n > 0 else {
        if response.isEmpty { throw Failure(description: "no answer: \(String(cString: strerror(errno)))") }
        break
      }
      response += buffer[0..<n]
    }
    return try parse(response)
  }

  /// The status code from `HTTP/1.x NNN ...` and the first line of the body.
  static func parse(_ bytes: [UInt8]) throws(Failure) -> Answer {
    let text = String(decoding: bytes, as: UTF8.self)
    let statusLine = text.prefix { $0 != "\r" && $0 != "\n" }
    let fields = statusLine.split(separator: " ", maxSplits: 2)
    guard fields.count >= 2, fields[0].hasPrefix("HTTP/1."), fields[1].count == 3, let status = Int(fields[1]) else {
      throw Failure(description: "not an HTTP answer")
    }
    var body = ""
    if let end = text.range(of: "\r\n\r\n") {
      body = String(text[end.upperBound...].prefix { $0 != "\n" && $0 != "\r" }.prefix(200))
    }
    return Answer(status: status, firstBodyLine: body)
  }
}
