import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// An etcd member's client address.
public struct EtcdEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// `HOST:PORT`, with or without `http://`. (TLS to etcd is not supported yet: the scheme
    /// `https://` is refused rather than silently spoken in clear.)
    public init?(_ text: String) {
        var rest = Substring(text)
        if rest.hasPrefix("https://") { return nil }
        if rest.hasPrefix("http://") { rest = rest.dropFirst(7) }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]), (1...65_535).contains(port) else { return nil }
        let host = String(rest[..<colon])
        guard !host.isEmpty else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { "\(host):\(port)" }

    /// A comma-separated list of endpoints, or nil naming the first that is not valid.
    public static func list(_ text: String) -> Result<[EtcdEndpoint], EtcdError> {
        var endpoints: [EtcdEndpoint] = []
        for part in text.split(separator: ",") {
            let trimmed = part.trimmingCharacters(in: .whitespaces)
            guard let endpoint = EtcdEndpoint(trimmed) else {
                return .failure(EtcdError(.invalid, "'\(trimmed)' is not an etcd endpoint (HOST:PORT or http://HOST:PORT)"))
            }
            endpoints.append(endpoint)
        }
        if endpoints.isEmpty { return .failure(EtcdError(.invalid, "no etcd endpoint given")) }
        return .success(endpoints)
    }
}

public struct EtcdError: Error, Sendable, CustomStringConvertible, Equatable {
    public enum Kind: Sendable, Equatable {
        /// No member could be reached, or the connection broke: the request may or may not
        /// have been applied if it was sent.
        case unreachable
        /// No answer in time: the request may or may not have been applied.
        case timeout
        /// etcd has no leader or could not commit in time (gRPC Unavailable or DeadlineExceeded).
        case unavailable
        /// A lease that no longer exists.
        case leaseNotFound
        /// A revision etcd has compacted away.
        case compacted
        /// Anything else etcd refused (a request too large, too many operations, …).
        case refused
        /// An answer that is not what etcd's API says.
        case malformed
        /// Bad input on our side, such as an endpoint that does not parse.
        case invalid
    }

    public var kind: Kind
    public var message: String

    public init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { message }

    /// Whether a request that got this error may have been applied anyway.
    public var outcomeUnknown: Bool { kind == .unreachable || kind == .timeout || kind == .unavailable }
}

public struct EtcdKeyValue: Sendable, Equatable {
    public var key: [UInt8]
    public var value: [UInt8]
    public var createRevision: Int64
    public var modRevision: Int64
    public var version: Int64
    public var lease: Int64

    public var keyString: String { String(decoding: key, as: UTF8.self) }
}

public struct EtcdRange: Sendable {
    /// The store's revision when this was read.
    public var revision: Int64
    public var kvs: [EtcdKeyValue]
    /// More keys were in range than `limit` let through.
    public var more: Bool
    public var count: Int64
}

/// A condition of a transaction.
public struct EtcdCompare: Sendable {
    public enum Target: String, Sendable { case version = "VERSION", create = "CREATE", mod = "MOD", value = "VALUE", lease = "LEASE" }
    public enum Relation: String, Sendable { case equal = "EQUAL", greater = "GREATER", less = "LESS", notEqual = "NOT_EQUAL" }
    var key: [UInt8]
    var target: Target
    var relation: Relation
    var number: Int64
    var bytes: [UInt8]

    /// The key's create revision (0: the key does not exist).
    public static func createRevision(_ key: String, _ relation: Relation = .equal, _ revision: Int64) -> EtcdCompare {
        EtcdCompare(key: Array(key.utf8), target: .create, relation: relation, number: revision, bytes: [])
    }

    public static func modRevision(_ key: String, _ relation: Relation = .equal, _ revision: Int64) -> EtcdCompare {
        EtcdCompare(key: Array(key.utf8), target: .mod, relation: relation, number: revision, bytes: [])
    }

    public static func value(_ key: String, _ relation: Relation = .equal, _ value: [UInt8]) -> EtcdCompare {
        EtcdCompare(key: Array(key.utf8), target: .value, relation: relation, number: 0, bytes: value)
    }

    var json: [String: Any] {
        var object: [String: Any] = ["key": Data(key).base64EncodedString(), "target": target.rawValue, "result": relation.rawValue]
        switch target {
        case .version: object["version"] = String(number)
        case .create: object["create_revision"] = String(number)
        case .mod: object["mod_revision"] = String(number)
        case .value: object["value"] = Data(bytes).base64EncodedString()
        case .lease: object["lease"] = String(number)
        }
        return object
    }
}

/// An operation of a transaction.
public enum EtcdOperation: Sendable {
    case put(key: String, value: [UInt8], lease: Int64 = 0)
    case range(key: String, rangeEnd: String? = nil, limit: Int64 = 0)
    case deleteRange(key: String, rangeEnd: String? = nil)

    var json: [String: Any] {
        switch self {
        case .put(let key, let value, let lease):
            var put: [String: Any] = ["key": EtcdClient.base64(key), "value": Data(value).base64EncodedString()]
            if lease != 0 { put["lease"] = String(lease) }
            return ["request_put": put]
        case .range(let key, let rangeEnd, let limit):
            var range: [String: Any] = ["key": EtcdClient.base64(key)]
            if let rangeEnd { range["range_end"] = EtcdClient.base64(rangeEnd) }
            if limit > 0 { range["limit"] = String(limit) }
            return ["request_range": range]
        case .deleteRange(let key, let rangeEnd):
            var delete: [String: Any] = ["key": EtcdClient.base64(key)]
            if let rangeEnd { delete["range_end"] = EtcdClient.base64(rangeEnd) }
            return ["request_delete_range": delete]
        }
    }
}

public enum EtcdOperationResult: Sendable {
    case put
    case range(EtcdRange)
    case deleteRange(deleted: Int64)

    public var kvs: [EtcdKeyValue] {
        if case .range(let range) = self { return range.kvs }
        return []
    }
}

public struct EtcdTxnResult: Sendable {
    public var revision: Int64
    public var succeeded: Bool
    public var results: [EtcdOperationResult]
}

/// What a watch reports: the events of one revision or more, or that the watch ended.
public enum EtcdWatchEvent: Sendable {
    public enum Change: Sendable {
        case put(EtcdKeyValue)
        case delete(EtcdKeyValue)
    }

    /// The watch is in place, at `revision`.
    case created(revision: Int64)
    case changes([Change], revision: Int64)
    /// The watch ended. `compactedAt` is set when the revision it started at was compacted:
    /// read again from the store, then watch from its revision.
    case ended(reason: String, compactedAt: Int64?)
}

/// A client of etcd's v3 API through its JSON gateway (HTTP/1.1 and JSON on each member's
/// client port), on SwiftNIO. Why not gRPC, why not async-http-client: docs/CLUSTER.md.
///
/// Unary calls go over one connection to one member at a time; when that member cannot be
/// reached the client moves to the next. A call that was sent and then failed is not sent
/// again here (etcd may have applied it): the caller decides, from `EtcdError.outcomeUnknown`.
/// Reads that are safe to repeat are retried on the next member (`retry: true`).
public final class EtcdClient: Sendable {
    public let endpoints: [EtcdEndpoint]
    let group: any EventLoopGroup
    private let ownsGroup: Bool
    /// How long one call may take before it fails with `.timeout`.
    public let callTimeout: TimeAmount

    private struct State {
        var next = 0
        /// The connection in use, once made.
        var connected: EtcdConnection?
        /// A connection being made.
        var connecting: EventLoopFuture<EtcdConnection>?
        var closed = false
    }

    private let state = Mutex(State())

    public init(endpoints: [EtcdEndpoint], group: (any EventLoopGroup)? = nil, callTimeout: TimeAmount = .seconds(2)) {
        precondition(!endpoints.isEmpty, "an etcd client needs an endpoint")
        self.endpoints = endpoints
        self.ownsGroup = group == nil
        self.group = group ?? MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.callTimeout = callTimeout
    }

    /// Closes the connection (and the event loop, if the client made it).
    public func close() {
        let (connected, connecting) = state.withLock { state in
            state.closed = true
            defer {
                state.connected = nil
                state.connecting = nil
            }
            return (state.connected, state.connecting)
        }
        connected?.close()
        connecting?.whenSuccess { $0.close() }
        if ownsGroup { try? group.syncShutdownGracefully() }
    }

    static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    /// The connection to use now, made if there is none; a broken one is replaced by one to
    /// the next member.
    private func connection() -> EventLoopFuture<EtcdConnection> {
        let (future, made) = state.withLock { state -> (EventLoopFuture<EtcdConnection>, Bool) in
            if state.closed {
                return (group.any().makeFailedFuture(EtcdError(.unreachable, "the etcd client is closed")), false)
            }
            if let connected = state.connected {
                if connected.isActive { return (connected.channel.eventLoop.makeSucceededFuture(connected), false) }
                state.connected = nil
            }
            if let connecting = state.connecting { return (connecting, false) }
            let endpoint = endpoints[state.next % endpoints.count]
            state.next += 1
            let connecting = EtcdConnection.connect(to: endpoint, on: group.any(), timeout: min(callTimeout, .seconds(1)))
            state.connecting = connecting
            return (connecting, true)
        }
        if made {
            // Registered outside the lock: the future may already be complete.
            future.whenComplete { result in
                self.state.withLock { state in
                    guard state.connecting === future else { return }
                    state.connecting = nil
                    if case .success(let connection) = result {
                        if state.closed { connection.close() } else { state.connected = connection }
                    }
                }
            }
        }
        return future
    }

    private func drop(_ connection: EtcdConnection) {
        state.withLock { state in
            if state.connected === connection { state.connected = nil }
        }
        connection.close()
    }

    /// POSTs `body` to `path` on a member and returns the answer's JSON object. A connection
    /// that cannot be made is tried on each member in turn; with `retry`, so is a call that
    /// failed after it was sent.
    func call(_ path: String, _ body: [String: Any], retry: Bool) async throws -> [String: Any] {
        let bytes = try ByteBuffer(bytes: JSONSerialization.data(withJSONObject: body))
        var lastError = EtcdError(.unreachable, "no etcd member answered")
        for _ in 0..<endpoints.count {
            let connected: EtcdConnection
            do {
                connected = try await connection().get()
            } catch {
                lastError = error as? EtcdError ?? EtcdError(.unreachable, "\(error)")
                continue
            }
            if !connected.isActive {
                // Closed by the member while idle: nothing was sent on it; try a new one.
                drop(connected)
                lastError = EtcdError(.unreachable, "etcd at \(connected.endpoint) closed an idle connection")
                continue
            }
            do {
                let reply = try await connected.call(path, bytes, deadline: .now() + callTimeout).get()
                return try Self.decode(reply, path: path)
            } catch let error as EtcdError {
                if error.kind == .unreachable || error.kind == .timeout { drop(connected) }
                lastError = error
                if retry && error.outcomeUnknown { continue }
                throw error
            }
        }
        throw lastError
    }

    static func decode(_ reply: EtcdHTTPReply, path: String) throws -> [String: Any] {
        let data = Data(reply.body.readableBytesView)
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw EtcdError(.malformed, "etcd answered \(path) with status \(reply.status) and no JSON object")
        }
        if reply.status != 200 || object["error"] != nil && object["header"] == nil && object["result"] == nil {
            throw error(from: object, status: reply.status)
        }
        return object
    }

    static func error(from object: [String: Any], status: Int) -> EtcdError {
        let message = (object["message"] as? String) ?? (object["error"] as? String) ?? "status \(status)"
        let code = int(object["code"])
        switch code {
        case 14, 4: return EtcdError(.unavailable, "etcd: \(message)")
        case 5 where message.contains("lease"): return EtcdError(.leaseNotFound, "etcd: \(message)")
        case 11 where message.contains("compacted"): return EtcdError(.compacted, "etcd: \(message)")
        default: return EtcdError(.refused, "etcd: \(message) (code \(code))")
        }
    }

    // MARK: JSON fields (proto3's JSON: 64-bit integers as strings, bytes as base64, zeros left out)

    static func int(_ value: Any?) -> Int64 {
        switch value {
        case let text as String: return Int64(text) ?? 0
        case let number as NSNumber: return number.int64Value
        default: return 0
        }
    }

    static func bytes(_ value: Any?) -> [UInt8] {
        guard let text = value as? String, let data = Data(base64Encoded: text) else { return [] }
        return Array(data)
    }

    static func revision(_ object: [String: Any]) -> Int64 {
        int((object["header"] as? [String: Any])?["revision"])
    }

    static func keyValue(_ object: [String: Any]) -> EtcdKeyValue {
        EtcdKeyValue(
            key: bytes(object["key"]), value: bytes(object["value"]), createRevision: int(object["create_revision"]),
            modRevision: int(object["mod_revision"]), version: int(object["version"]), lease: int(object["lease"]))
    }

    static func range(_ object: [String: Any], revision: Int64) -> EtcdRange {
        let kvs = (object["kvs"] as? [[String: Any]] ?? []).map(keyValue)
        return EtcdRange(revision: revision, kvs: kvs, more: (object["more"] as? Bool) ?? false, count: int(object["count"]))
    }

    // MARK: The API

    /// The keys from `key` up to `rangeEnd` (exclusive; nil: `key` alone), in key order.
    /// `newestFirst`: in descending key order (with `limit: 1`, the last key of a range).
    public func range(_ key: String, end rangeEnd: String? = nil, limit: Int64 = 0, revision: Int64 = 0, newestFirst: Bool = false) async throws -> EtcdRange {
        var body: [String: Any] = ["key": Self.base64(key)]
        if newestFirst {
            body["sort_order"] = "DESCEND"
            body["sort_target"] = "KEY"
        }
        if let rangeEnd { body["range_end"] = Self.base64(rangeEnd) }
        if limit > 0 { body["limit"] = String(limit) }
        if revision > 0 { body["revision"] = String(revision) }
        let object = try await call("/v3/kv/range", body, retry: true)
        return Self.range(object, revision: Self.revision(object))
    }

    /// Puts a key; returns the store's revision after it.
    @discardableResult
    public func put(_ key: String, _ value: [UInt8], lease: Int64 = 0) async throws -> Int64 {
        var body: [String: Any] = ["key": Self.base64(key), "value": Data(value).base64EncodedString()]
        if lease != 0 { body["lease"] = String(lease) }
        return Self.revision(try await call("/v3/kv/put", body, retry: false))
    }

    /// Deletes a key or a range; returns how many were deleted.
    @discardableResult
    public func delete(_ key: String, end rangeEnd: String? = nil) async throws -> Int64 {
        var body: [String: Any] = ["key": Self.base64(key)]
        if let rangeEnd { body["range_end"] = Self.base64(rangeEnd) }
        return Self.int(try await call("/v3/kv/deleterange", body, retry: false)["deleted"])
    }

    /// If every comparison holds, `success`'s operations, else `failure`'s: one atomic step.
    public func txn(_ compare: [EtcdCompare], success: [EtcdOperation], failure: [EtcdOperation] = []) async throws -> EtcdTxnResult {
        let body: [String: Any] = ["compare": compare.map(\.json), "success": success.map(\.json), "failure": failure.map(\.json)]
        let object = try await call("/v3/kv/txn", body, retry: false)
        let revision = Self.revision(object)
        let results = (object["responses"] as? [[String: Any]] ?? []).map { response -> EtcdOperationResult in
            if let range = response["response_range"] as? [String: Any] { return .range(Self.range(range, revision: revision)) }
            if let delete = response["response_delete_range"] as? [String: Any] { return .deleteRange(deleted: Self.int(delete["deleted"])) }
            return .put
        }
        return EtcdTxnResult(revision: revision, succeeded: (object["succeeded"] as? Bool) ?? false, results: results)
    }

    /// A lease of `ttl` seconds; returns its id and the TTL etcd gave it.
    public func grantLease(ttl: Int64) async throws -> (id: Int64, ttl: Int64) {
        let object = try await call("/v3/lease/grant", ["TTL": String(ttl)], retry: false)
        if let error = object["error"] as? String, !error.isEmpty { throw EtcdError(.refused, "etcd: \(error)") }
        return (Self.int(object["ID"]), Self.int(object["TTL"]))
    }

    /// Renews a lease; returns its TTL, or throws `.leaseNotFound` once it has expired.
    public func keepAlive(lease: Int64) async throws -> Int64 {
        let object = try await call("/v3/lease/keepalive", ["ID": String(lease)], retry: true)
        let result = object["result"] as? [String: Any] ?? object
        let ttl = Self.int(result["TTL"])
        if ttl <= 0 { throw EtcdError(.leaseNotFound, "etcd: lease \(lease) has expired") }
        return ttl
    }

    /// Ends a lease, deleting the keys attached to it.
    public func revoke(lease: Int64) async throws {
        do {
            _ = try await call("/v3/lease/revoke", ["ID": String(lease)], retry: false)
        } catch let error as EtcdError where error.kind == .leaseNotFound {
            return
        }
    }

    /// Drops the history before `revision` (keys keep their current values): what lets etcd
    /// reclaim the space of deleted journal entries.
    public func compact(to revision: Int64) async throws {
        _ = try await call("/v3/kv/compaction", ["revision": String(revision), "physical": true], retry: false)
    }

    /// The revision and the member that answered, and who etcd's leader is.
    public func status() async throws -> (revision: Int64, member: UInt64, leader: UInt64) {
        let object = try await call("/v3/maintenance/status", [:], retry: true)
        let header = object["header"] as? [String: Any] ?? [:]
        return (Self.int(header["revision"]), UInt64(bitPattern: Self.int(header["member_id"])), UInt64(bitPattern: Self.int(object["leader"])))
    }

    /// Watches `key` (or the range up to `rangeEnd`) from `revision` on, calling `events` on an
    /// event loop with each report, in order, until the watch ends (the last report is
    /// `.ended`) or is cancelled. The watch asks the member to end it if the member loses
    /// etcd's leader, so a member cut off from the others cannot keep a watcher waiting
    /// without news.
    public func watch(
        _ key: String, end rangeEnd: String? = nil, from revision: Int64, events: @escaping @Sendable (EtcdWatchEvent) -> Void
    ) -> EtcdWatch {
        let watch = EtcdWatch()
        var create: [String: Any] = ["key": Self.base64(key), "start_revision": String(revision)]
        if let rangeEnd { create["range_end"] = Self.base64(rangeEnd) }
        let body = (try? JSONSerialization.data(withJSONObject: ["create_request": create])).map { ByteBuffer(bytes: $0) } ?? ByteBuffer()
        let endpoints = self.endpoints
        let start = state.withLock { state -> Int in
            defer { state.next += 1 }
            return state.next
        }
        let loop = group.any()
        let ended = Mutex(false)
        @Sendable func end(_ reason: String, compactedAt: Int64? = nil) {
            let first = ended.withLock { ended in
                defer { ended = true }
                return !ended
            }
            if first { events(.ended(reason: reason, compactedAt: compactedAt)) }
        }
        // Connects to each member in turn until one takes the watch.
        @Sendable func attempt(_ tries: Int) {
            guard tries < endpoints.count else {
                end("no etcd member could be reached to watch \(key)")
                return
            }
            let endpoint = endpoints[(start + tries) % endpoints.count]
            EtcdConnection.connect(to: endpoint, on: loop, timeout: min(callTimeout, .seconds(1))).whenComplete { result in
                switch result {
                case .failure:
                    attempt(tries + 1)
                case .success(let connection):
                    guard watch.attach(connection) else {
                        connection.close()
                        end("cancelled")
                        return
                    }
                    connection.stream("/v3/watch", body, headers: [("Grpc-Metadata-hasleader", "true")]) { message in
                        guard let report = Self.watchReport(message) else {
                            end("etcd sent a watch message that is not JSON")
                            connection.close()
                            return
                        }
                        if case .ended(let reason, let compacted) = report {
                            end(reason, compactedAt: compacted)
                            connection.close()
                        } else if !ended.withLock({ $0 }) {
                            events(report)
                        }
                    }.whenComplete { result in
                        switch result {
                        case .success: end("etcd at \(endpoint) ended the watch")
                        case .failure(let error): end("the watch on etcd at \(endpoint) broke: \(error)")
                        }
                    }
                }
            }
        }
        attempt(0)
        return watch
    }

    static func watchReport(_ message: ByteBuffer) -> EtcdWatchEvent? {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(message.readableBytesView))) as? [String: Any] else { return nil }
        if let error = object["error"] as? [String: Any] {
            return .ended(reason: "etcd: \((error["message"] as? String) ?? "watch error")", compactedAt: nil)
        }
        guard let result = object["result"] as? [String: Any] else { return nil }
        let revision = revision(result)
        let compacted = int(result["compact_revision"])
        if (result["canceled"] as? Bool) == true || compacted > 0 {
            let reason = (result["cancel_reason"] as? String).flatMap { $0.isEmpty ? nil : $0 } ?? (compacted > 0 ? "revision compacted" : "watch cancelled")
            return .ended(reason: "etcd: \(reason)", compactedAt: compacted > 0 ? compacted : nil)
        }
        if (result["created"] as? Bool) == true { return .created(revision: revision) }
        let changes = (result["events"] as? [[String: Any]] ?? []).map { event -> EtcdWatchEvent.Change in
            let kv = keyValue(event["kv"] as? [String: Any] ?? [:])
            return (event["type"] as? String) == "DELETE" ? .delete(kv) : .put(kv)
        }
        return .changes(changes, revision: revision)
    }
}

/// A running watch; `cancel` ends it (its last report is `.ended`).
public final class EtcdWatch: Sendable {
    private let state = Mutex<(connection: EtcdConnection?, cancelled: Bool)>((nil, false))

    func attach(_ connection: EtcdConnection) -> Bool {
        state.withLock { state in
            if state.cancelled { return false }
            state.connection = connection
            return true
        }
    }

    public func cancel() {
        let connection = state.withLock { state -> EtcdConnection? in
            state.cancelled = true
            return state.connection
        }
        connection?.close()
    }
}

/// The end of the range of keys that start with `prefix`: `prefix` with its last byte plus one
/// (etcd's convention; "\0" means every key after it).
public func etcdPrefixEnd(_ prefix: String) -> String {
    var bytes = Array(prefix.utf8)
    while let last = bytes.last {
        if last < 0xFF {
            bytes[bytes.count - 1] = last + 1
            return String(decoding: bytes, as: UTF8.self)
        }
        bytes.removeLast()
    }
    return "\0"
}
