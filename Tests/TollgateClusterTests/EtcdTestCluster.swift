import Foundation
import Synchronization
import Testing
import TollgateCluster

#if canImport(Glibc)
import Glibc
#endif

/// Real etcd members on loopback, each a child process with its own data directory, that a
/// test starts, kills, pauses and restarts.
final class EtcdTestCluster: Sendable {
    static let binary = ["/usr/bin/etcd", "/usr/local/bin/etcd"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Whether tests that need etcd run: when it is installed, or when TOLLGATE_REQUIRE_ETCD=1
    /// (then a missing etcd fails them instead of skipping them, as in .ci/run).
    static var enabled: Bool {
        binary != nil || ProcessInfo.processInfo.environment["TOLLGATE_REQUIRE_ETCD"] == "1"
    }

    struct Member: Sendable {
        var name: String
        var clientPort: Int
        var peerPort: Int
        var dataDirectory: String
        var endpoint: EtcdEndpoint { EtcdEndpoint(host: "127.0.0.1", port: clientPort) }
    }

    let members: [Member]
    let directory: String
    private let processes: Mutex<[Int: Process]>
    private let released = Atomic<Bool>(false)

    var endpoints: [EtcdEndpoint] { members.map(\.endpoint) }

    private init(members: [Member], directory: String) {
        self.members = members
        self.directory = directory
        self.processes = Mutex([:])
    }

    /// Starts `size` members and waits until the cluster commits a write. One test cluster runs
    /// at a time in the test process (`ClusterTestGate`), from here until `stop`: each starts
    /// etcd members and tollgated processes, and several at once on two cores starved each
    /// other and every other test of CPU (a CI run failed on timings that way).
    static func start(size: Int = 1) async throws -> EtcdTestCluster {
        guard binary != nil else { throw EtcdTestError("etcd is not installed (apt-get install etcd-server)") }
        await ClusterTestGate.shared.acquire()
        do {
            return try await launch(size: size)
        } catch {
            await ClusterTestGate.shared.release()
            throw error
        }
    }

    private static func launch(size: Int) async throws -> EtcdTestCluster {
        let directory = NSTemporaryDirectory() + "tollgate-etcd-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var members: [Member] = []
        for index in 0..<size {
            members.append(Member(name: "e\(index)", clientPort: try freePort(), peerPort: try freePort(), dataDirectory: directory + "/e\(index)"))
        }
        let cluster = EtcdTestCluster(members: members, directory: directory)
        for index in 0..<size { try cluster.launch(index) }
        try await cluster.waitUntilWritable()
        return cluster
    }

    private func launch(_ index: Int) throws {
        let member = members[index]
        let initial = members.map { "\($0.name)=http://127.0.0.1:\($0.peerPort)" }.joined(separator: ",")
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary!)
        process.arguments = [
            "--name", member.name, "--data-dir", member.dataDirectory,
            "--listen-client-urls", "http://127.0.0.1:\(member.clientPort)",
            "--advertise-client-urls", "http://127.0.0.1:\(member.clientPort)",
            "--listen-peer-urls", "http://127.0.0.1:\(member.peerPort)",
            "--initial-advertise-peer-urls", "http://127.0.0.1:\(member.peerPort)",
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--initial-cluster-token", URL(fileURLWithPath: directory).lastPathComponent,
            "--logger", "zap", "--log-level", "warn",
        ]
        let log = FileHandle(forWritingAtPath: directory + "/\(member.name).log") ?? {
            FileManager.default.createFile(atPath: directory + "/\(member.name).log", contents: nil)
            return FileHandle(forWritingAtPath: directory + "/\(member.name).log")!
        }()
        log.seekToEndOfFile()
        process.standardOutput = log
        process.standardError = log
        try process.run()
        processes.withLock { $0[index] = process }
    }

    /// Waits until a put through every member's endpoint list succeeds.
    func waitUntilWritable(timeout: Duration = .seconds(30)) async throws {
        let client = EtcdClient(endpoints: endpoints, callTimeout: .milliseconds(500))
        defer { client.close() }
        let start = ContinuousClock.now
        var lastError: (any Error)?
        while ContinuousClock.now - start < timeout {
            do {
                try await client.put("/tollgate-test/ready", Array("yes".utf8))
                return
            } catch {
                lastError = error
                try await Task.sleep(for: .milliseconds(100))
            }
        }
        throw EtcdTestError("etcd did not become writable in \(timeout): \(lastError.map { "\($0)" } ?? "")")
    }

    func kill(_ index: Int) {
        guard let process = processes.withLock({ $0.removeValue(forKey: index) }) else { return }
        Glibc.kill(process.processIdentifier, SIGKILL)
        Glibc.kill(process.processIdentifier, SIGCONT)
    }

    func pause(_ index: Int) {
        if let process = processes.withLock({ $0[index] }) { Glibc.kill(process.processIdentifier, SIGSTOP) }
    }

    func resume(_ index: Int) {
        if let process = processes.withLock({ $0[index] }) { Glibc.kill(process.processIdentifier, SIGCONT) }
    }

    /// Starts a killed member again on its data directory.
    func restart(_ index: Int) throws {
        kill(index)
        try launch(index)
    }

    /// Which member leads etcd's Raft now, if one answers.
    func leaderIndex() async -> Int? {
        for (index, member) in members.enumerated() where processes.withLock({ $0[index] != nil }) {
            let client = EtcdClient(endpoints: [member.endpoint], callTimeout: .milliseconds(500))
            defer { client.close() }
            if let status = try? await client.status(), status.leader != 0, status.leader == status.member { return index }
        }
        return nil
    }

    /// Kills every member and deletes their data (and the nodes' logs beside it), unless
    /// `TOLLGATE_KEEP_TEST_DATA=1` keeps them to read.
    func stop() {
        for index in members.indices { kill(index) }
        if !released.exchange(true, ordering: .relaxed) { Task { await ClusterTestGate.shared.release() } }
        if ProcessInfo.processInfo.environment["TOLLGATE_KEEP_TEST_DATA"] == "1" {
            FileHandle.standardError.write(Data("kept the test cluster's data and logs in \(directory)\n".utf8))
            return
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

struct EtcdTestError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A port nothing listens on right now, from the kernel.
func freePort() throws -> Int {
    let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard descriptor >= 0 else { throw EtcdTestError("socket failed: \(errno)") }
    defer { close(descriptor) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) } }
    guard bound == 0 else { throw EtcdTestError("bind failed: \(errno)") }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}


/// Lets one test cluster run at a time (`EtcdTestCluster.start` to `stop`).
actor ClusterTestGate {
    static let shared = ClusterTestGate()
    private var busy = false
    private var waiting: [CheckedContinuation<Void, Never>] = []

    func acquire() async {
        guard busy else {
            busy = true
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    func release() {
        if waiting.isEmpty { busy = false } else { waiting.removeFirst().resume() }
    }
}
