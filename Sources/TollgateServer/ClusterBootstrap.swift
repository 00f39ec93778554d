import Foundation
import Logging
import TollgateClient
import TollgateCluster
import TollgateJournal
import TollgateWire

#if canImport(Glibc)
import Glibc
#endif

/// A new or replaced replica of a shard starts from another node's files when the shard's log
/// in etcd no longer goes back to record 1 (the leader trims what every node has
/// checkpointed): the node with the newest checkpoint is asked for it and for its
/// idempotency keys' runs (NODE_FILES, READ_NODE_FILE, over the gate protocol with the admin
/// token), which are staged in `DATA/bootstrap/` and swapped in before recovery. The leader
/// never stops: a checkpoint and a run are immutable files, and a run merged away while it
/// is copied has its keys in the run that replaced it, which is copied too.
///
/// - A node with an empty data directory copies before it recovers, then recovers from the
///   copy and reads the log in etcd after the checkpoint.
/// - A node whose journal ends before the log's first record (it was down while the log was
///   trimmed past it) stages a copy and restarts (exit 75); the next start swaps the copy in.
///   What it had is kept aside in `DATA/replaced-TIME/`, never deleted.
struct ClusterBootstrap {
    let configuration: ServerConfiguration
    let logger: Logger
    /// The admin token the shard's nodes accept (`upstreamToken`, else this node's own).
    let token: String

    var data: String { configuration.dataDirectory }
    var staging: String { data + "/bootstrap" }
    static let completeMarker = "COMPLETE"
    /// A piece of a file asked for at a time.
    static let pieceBytes: UInt32 = 512 << 10

    /// Before recovery: swaps in a complete staged copy; else, with nothing local and the
    /// shard's log trimmed, copies a node's files now and swaps them in.
    func prepare() async throws {
        try swapStaged()
        let journal = data + "/journal"
        let local = ((try? FileManager.default.contentsOfDirectory(atPath: journal)) ?? []).filter { $0.hasSuffix(".tgc") || $0.hasSuffix(".tgj") }
        guard local.isEmpty else { return }
        let (etcd, keys) = try configuration.etcd()
        defer { etcd.close() }
        let log = ShardLog(client: etcd, keys: keys, shard: configuration.shard)
        let oldest: UInt64?
        do {
            oldest = try await log.oldestFirst()
        } catch {
            throw ServerError("cannot read shard \(configuration.shard)'s journal from etcd (\(configuration.etcdEndpoints.joined(separator: ","))): \(error)")
        }
        guard let oldest, oldest > 1 else { return }
        logger.notice(
            "this node has no data and the shard's journal in etcd starts at record \(oldest): copying another node's checkpoint and keys",
            metadata: ["shard": "\(configuration.shard)"])
        try await copy(needing: oldest - 1, etcd: etcd, keys: keys)
        try swapStaged()
    }

    /// Copies, into `DATA/bootstrap/`, the files of the node whose newest checkpoint is newest
    /// (and includes record `needing` at least), marked complete once all are there.
    func copy(needing: UInt64, etcd: EtcdClient, keys: ClusterKeys) async throws {
        let me = configuration.nodeName
        let statuses = try await etcd.range(keys.nodesPrefix(configuration.shard), end: etcdPrefixEnd(keys.nodesPrefix(configuration.shard))).kvs
            .compactMap { try? JSONDecoder().decode(NodeStatus.self, from: Data($0.value)) }
            .filter { $0.node != me && $0.checkpoint >= needing }
            .sorted { $0.checkpoint > $1.checkpoint }
        var failures: [String] = []
        for peer in statuses {
            do {
                let started = ContinuousClock.now
                let (checkpoint, runs, bytes) = try await copy(from: peer, needing: needing)
                logger.notice(
                    "copied another node's files to start from",
                    metadata: [
                        "from": "\(peer.node)", "checkpoint": "\(checkpoint)", "keyRuns": "\(runs)", "bytes": "\(bytes)",
                        "seconds": "\((ContinuousClock.now - started).secondsText)",
                    ])
                return
            } catch {
                failures.append("\(peer.node) at \(peer.address): \(error)")
                logger.warning("cannot copy a node's files; trying another", metadata: ["node": "\(peer.node)", "error": "\(error)"])
            }
        }
        throw ServerError(
            "shard \(configuration.shard)'s journal in etcd starts after record \(needing) and no other node could give a checkpoint that covers it"
                + (failures.isEmpty ? " (no node of the shard has published one: start this node once another has checkpointed)" : ": \(failures.joined(separator: "; "))"))
    }

    private func copy(from peer: NodeStatus, needing: UInt64) async throws -> (checkpoint: UInt64, runs: Int, bytes: UInt64) {
        guard let colon = peer.address.lastIndex(of: ":"), let port = Int(peer.address[peer.address.index(after: colon)...]) else {
            throw ServerError("its address \(peer.address) is not HOST:PORT")
        }
        var host = String(peer.address[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let client = try await TollgateClient.connect(
            TollgateClient.Configuration(
                host: host, port: port, clientName: "tollgated-bootstrap", token: token, requestTimeoutMilliseconds: 30_000, retries: 0,
                tls: configuration.upstreamTLS))
        defer { Task { await client.close() } }
        let files = FileManager.default
        try? files.removeItem(atPath: staging)
        try files.createDirectory(atPath: staging + "/journal", withIntermediateDirectories: true)
        try files.createDirectory(atPath: staging + "/keys", withIntermediateDirectories: true)

        var listed = try await list(client)
        // The newest checkpoint that reads back whole and covers `needing`.
        var chosen: (name: String, sequence: UInt64)?
        var copiedBytes: UInt64 = 0
        for file in listed.filter({ $0.name.hasPrefix("checkpoint-") }).sorted(by: { $0.name > $1.name }) {
            let path = staging + "/journal/" + file.name
            guard try await download(file, from: client, to: path) else { continue }
            if let (_, position) = Checkpoint.read(path, limits: configuration.limits), position.sequence >= needing {
                chosen = (file.name, position.sequence)
                copiedBytes += file.bytes
                break
            }
            try? files.removeItem(atPath: path)
        }
        guard let chosen else { throw ServerError("it has no checkpoint that reads back whole and includes record \(needing)") }
        // Every run it lists, and again until no new one appears: a run merged away while
        // copying has its keys in the one that replaced it.
        var copied = Set<String>()
        for _ in 0..<10 {
            let runs = listed.filter { $0.name.hasPrefix("keys-") && !copied.contains($0.name) }
            if runs.isEmpty { break }
            for run in runs {
                if try await download(run, from: client, to: staging + "/keys/" + run.name) { copiedBytes += run.bytes }
                copied.insert(run.name)
            }
            listed = try await list(client)
        }
        try syncDirectory(staging + "/journal")
        try syncDirectory(staging + "/keys")
        let marker = staging + "/" + Self.completeMarker
        guard files.createFile(atPath: marker, contents: Data("\(peer.node) \(chosen.name)\n".utf8)) else { throw ServerError("cannot write \(marker)") }
        try syncDirectory(staging)
        return (chosen.sequence, copied.count, copiedBytes)
    }

    private func list(_ client: TollgateClient) async throws -> [NodeFile] {
        switch try await client.send(.nodeFiles) {
        case .files(let files): return files.filter { LedgerService.isNodeFileName($0.name) }
        case let other: throw ServerError("NODE_FILES answered \(other)")
        }
    }

    /// Copies one file whole; false if the node no longer has it.
    private func download(_ file: NodeFile, from client: TollgateClient, to path: String) async throws -> Bool {
        let temporary = path + ".part"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard descriptor >= 0 else { throw ServerError("cannot create \(temporary): \(String(cString: strerror(errno)))") }
        var closed = false
        defer { if !closed { close(descriptor) } }
        var offset: UInt64 = 0
        while offset < file.bytes {
            let piece: [UInt8]
            switch try await client.send(.readNodeFile(name: file.name, offset: offset, length: Self.pieceBytes)) {
            case .transfer(let bytes): piece = bytes
            case .answer(.refused):
                unlink(temporary)
                return false
            case let other: throw ServerError("READ_NODE_FILE \(file.name) answered \(other)")
            }
            guard !piece.isEmpty else { throw ServerError("\(file.name) ended at \(offset) bytes, listed as \(file.bytes)") }
            let written = piece.withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
            guard written == piece.count else { throw ServerError("cannot write \(temporary): \(String(cString: strerror(errno)))") }
            offset += UInt64(piece.count)
        }
        guard fsync(descriptor) == 0 else { throw ServerError("cannot sync \(temporary): \(String(cString: strerror(errno)))") }
        close(descriptor)
        closed = true
        guard rename(temporary, path) == 0 else { throw ServerError("cannot rename \(temporary): \(String(cString: strerror(errno)))") }
        return true
    }

    /// Puts a complete staged copy in place of the node's journal and keys (kept aside in
    /// `DATA/replaced-TIME/`); an incomplete one is removed.
    func swapStaged() throws {
        let files = FileManager.default
        guard files.fileExists(atPath: staging) else { return }
        guard files.fileExists(atPath: staging + "/" + Self.completeMarker) else {
            logger.warning("removing an incomplete copy of another node's files", metadata: ["directory": "\(staging)"])
            try? files.removeItem(atPath: staging)
            return
        }
        let aside = data + "/replaced-\(Int(Date().timeIntervalSince1970))"
        for name in ["journal", "keys"] where files.fileExists(atPath: data + "/" + name) {
            if ((try? files.contentsOfDirectory(atPath: data + "/" + name)) ?? []).isEmpty {
                try files.removeItem(atPath: data + "/" + name)
                continue
            }
            try files.createDirectory(atPath: aside, withIntermediateDirectories: true)
            try files.moveItem(atPath: data + "/" + name, toPath: aside + "/" + name)
        }
        for name in ["journal", "keys"] {
            try files.moveItem(atPath: staging + "/" + name, toPath: data + "/" + name)
        }
        try files.removeItem(atPath: staging)
        try syncDirectory(data)
        logger.notice("starting from another node's files", metadata: ["previous": "\(aside)"])
    }
}

extension ServerConfiguration {
    /// TLS to the cluster's nodes, if any of `upstreamCAFile`, `upstreamCertificateFile` is set.
    var upstreamTLS: TLSOptions? {
        guard upstreamCAFile != nil || upstreamCertificateFile != nil else { return nil }
        return TLSOptions(caFile: upstreamCAFile, certificateFile: upstreamCertificateFile, keyFile: upstreamKeyFile)
    }
}
