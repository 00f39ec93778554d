import Foundation
import Testing
import TollgateServer

#if canImport(Glibc)
import Glibc
#endif

@Suite struct SystemdNotifyTests {
    /// A datagram socket standing in for systemd's, bound to `path` (a leading "@": abstract).
    static func listen(_ path: String) throws -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let abstract = path.hasPrefix("@")
        let bytes = (abstract ? [0] : []) + Array((abstract ? String(path.dropFirst()) : path).utf8)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sa_family_t>.size + bytes.count)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) } }
        guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        return descriptor
    }

    static func receive(_ descriptor: Int32) -> String {
        var buffer = [UInt8](repeating: 0, count: 512)
        let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
        return count > 0 ? String(decoding: buffer.prefix(count), as: UTF8.self) : ""
    }

    @Test func readinessReachesTheNotifySocket() throws {
        let path = NSTemporaryDirectory() + "tollgate-notify-\(getpid()).sock"
        unlink(path)
        let descriptor = try Self.listen(path)
        defer { close(descriptor); unlink(path) }
        #expect(SystemdNotify.send("READY=1", environment: ["NOTIFY_SOCKET": path]))
        #expect(Self.receive(descriptor) == "READY=1")

        let abstract = "@tollgate-notify-\(getpid())"
        let other = try Self.listen(abstract)
        defer { close(other) }
        #expect(SystemdNotify.send("STOPPING=1", environment: ["NOTIFY_SOCKET": abstract]))
        #expect(Self.receive(other) == "STOPPING=1")
    }

    @Test func withoutASocketNothingIsSent() {
        #expect(!SystemdNotify.send("READY=1", environment: [:]))
        #expect(!SystemdNotify.send("READY=1", environment: ["NOTIFY_SOCKET": "/nonexistent/socket"]))
    }
}
