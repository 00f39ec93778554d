import ArgumentParser
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// `tollgate health`: asks the admin port whether tollgated is ready — for a container's
/// HEALTHCHECK or a script, where no HTTP client may be installed. Needs no credential.
struct HealthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health", abstract: "Ask tollgated's admin port whether it is ready (exit 0) or not (exit 1).",
        discussion: """
            GETs /readyz (or --path) from the admin port and prints the answer. It asks the admin port \
            (--admin), which is where readiness lives, not the gate port that other commands' --server \
            names: `tollgate ping --server HOST:PORT` checks that one.
            """)

    @Option(help: "The admin port, HOST:PORT (also TOLLGATE_ADMIN; default 127.0.0.1:7401).") var admin: String?
    @Option(help: "What to ask: /readyz (ready for decisions) or /healthz (the process is up).") var path = "/readyz"
    @Option(help: "Give up after this many milliseconds.") var timeoutMs = 2_000
    @Flag(help: "Print {\"status\": …, \"body\": …} (or {\"error\": …}) instead of text.") var json = false

    func run() throws {
        let address = admin ?? ProcessInfo.processInfo.environment["TOLLGATE_ADMIN"] ?? "127.0.0.1:7401"
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            throw ValidationError("--admin must be HOST:PORT, not \"\(address)\"")
        }
        guard path.hasPrefix("/") else { throw ValidationError("--path must start with /") }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        do {
            let (status, body) = try Self.get(host: host, port: port, path: path, timeoutMilliseconds: timeoutMs)
            let text = body.trimmingCharacters(in: .whitespacesAndNewlines)
            print(json ? Output.json(["admin": address, "path": path, "status": status, "body": text, "ready": status == 200]) : "\(status) \(text)")
            if status != 200 { throw ExitCode(ExitStatus.failed) }
        } catch let error as HealthError {
            print(json ? Output.json(["admin": address, "path": path, "error": error.message, "ready": false]) : "unreachable: \(error.message)")
            throw ExitCode(ExitStatus.failed)
        }
    }

    struct HealthError: Error {
        var message: String
    }

    /// One HTTP/1.1 GET over a plain socket: the status code and the body.
    static func get(host: String, port: UInt16, path: String, timeoutMilliseconds: Int, authorization: String? = nil, maxBytes: Int = 65_536) throws -> (Int, String) {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &found) == 0, let info = found else {
            throw HealthError(message: "cannot resolve \(host)")
        }
        defer { freeaddrinfo(found) }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
        guard fd >= 0 else { throw HealthError(message: "socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutMilliseconds / 1_000, tv_usec: (timeoutMilliseconds % 1_000) * 1_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
            throw HealthError(message: "\(host):\(port): \(String(cString: strerror(errno)))")
        }
        let credential = authorization.map { "Authorization: Bearer \($0)\r\n" } ?? ""
        let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\n\(credential)Connection: close\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else {
            throw HealthError(message: "cannot send: \(String(cString: strerror(errno)))")
        }
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4_096)
        while reply.count < maxBytes {
            let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if count < 0 { throw HealthError(message: "no answer within \(timeoutMilliseconds) ms") }
            if count == 0 { break }
            reply += buffer[0..<count]
        }
        let text = String(decoding: reply, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        guard let statusLine = parts.first?.split(separator: "\r\n").first, let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") else {
            throw HealthError(message: "not an HTTP answer: \(text.prefix(80))")
        }
        return (status, parts.dropFirst().joined(separator: "\r\n\r\n"))
    }
}
