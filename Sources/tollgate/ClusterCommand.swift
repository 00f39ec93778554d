import ArgumentParser
import Foundation
import TollgateClient
import TollgateCluster
import TollgateLedger
import TollgateWire

/// `tollgate cluster`: a cluster's state in etcd (docs/CLUSTER.md) — who leads each shard and
/// how far its journal goes, the shards new account families are placed on, and where an
/// account is. It talks to etcd, not to tollgated.
struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster", abstract: "A cluster's shards, leaders and placements, read from (and the shard list written to) etcd.",
        subcommands: [Status.self, Shards.self, Placement.self, Move.self])

    struct Where: ParsableArguments {
        @Option(help: "etcd's client endpoints, comma-separated HOST:PORT (also TOLLGATE_ETCD_ENDPOINTS).") var etcd: String?
        @Option(help: "The cluster's name (also TOLLGATE_CLUSTER_NAME; default tollgate).") var cluster: String?
        @Flag(help: "Print JSON.") var json = false

        func connect() throws -> (EtcdClient, ClusterKeys) {
            let environment = ProcessInfo.processInfo.environment
            let text = etcd ?? environment["TOLLGATE_ETCD_ENDPOINTS"] ?? "127.0.0.1:2379"
            let endpoints: [EtcdEndpoint]
            switch EtcdEndpoint.list(text) {
            case .success(let list): endpoints = list
            case .failure(let error): throw ValidationError(error.message)
            }
            let name = cluster ?? environment["TOLLGATE_CLUSTER_NAME"] ?? "tollgate"
            guard let keys = ClusterKeys(cluster: name) else { throw ValidationError("'\(name)' is not a cluster name (a-z, 0-9, '-', '_', '.')") }
            return (EtcdClient(endpoints: endpoints, callTimeout: .seconds(3)), keys)
        }
    }

    static func fail(_ error: any Error, json: Bool) -> ExitCode {
        let message = "\(error)"
        if json { print(Output.json(["error": message])) } else { FileHandle.standardError.write(Data("tollgate: \(message)\n".utf8)) }
        return ExitCode(ExitStatus.failed)
    }

    static func shardList(_ client: EtcdClient, _ keys: ClusterKeys) async throws -> (list: [String], set: Bool) {
        guard let value = try await client.range(keys.shardList).kvs.first?.value else { return (["s0"], false) }
        guard let list = try? JSONDecoder().decode([String].self, from: Data(value)) else {
            throw ValidationError("\(keys.shardList) does not hold a JSON array of shard names")
        }
        return (list, true)
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Each shard's leader, lease token and journal's last record.")
        @OptionGroup var place: Where

        func run() async throws {
            let (client, keys) = try place.connect()
            defer { client.close() }
            do {
                let (list, _) = try await ClusterCommand.shardList(client, keys)
                var rows: [[String: Any]] = []
                for shard in list {
                    let leader = try await ShardElection(client: client, keys: keys, shard: shard, record: LeaderRecord(node: "-", address: "-"), ttlSeconds: 1).current()
                    let log = ShardLog(client: client, keys: keys, shard: shard)
                    let last = try await log.lastSequence()
                    let oldest = try await log.oldestFirst() ?? 0
                    rows.append([
                        "shard": shard, "leader": leader.record?.node ?? "", "address": leader.record?.address ?? "", "token": leader.token,
                        "journalFirst": oldest, "journalLast": last,
                    ])
                }
                if place.json {
                    print(Output.json(["cluster": keys.cluster, "shards": rows]))
                } else {
                    print("cluster \(keys.cluster)")
                    for row in rows {
                        let leader = (row["leader"] as? String).flatMap { $0.isEmpty ? nil : $0 }
                        let who = leader.map { "\($0) at \(row["address"]!) (token \(row["token"]!))" } ?? "no leader"
                        print("  \(row["shard"]!): \(who); journal \(row["journalFirst"]!)…\(row["journalLast"]!)")
                    }
                }
            } catch {
                throw ClusterCommand.fail(error, json: place.json)
            }
        }
    }

    struct Shards: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show, or set, the shards new account families are placed on.",
            discussion: """
                With names, sets the list (a JSON array at /tollgate/CLUSTER/map/shards). Families already \
                placed stay where they are: adding a shard places new families on it too, by their \
                names' hash; removing one stops new placements there.
                """)
        @OptionGroup var place: Where
        @Argument(help: "The shard names to place new families on.") var shards: [String] = []

        func run() async throws {
            for shard in shards where !ClusterKeys.isValidName(shard) {
                throw ValidationError("'\(shard)' is not a shard name (1 to 63 of a-z, 0-9, '-', '_', '.')")
            }
            var spaces: [UInt16: String] = [:]
            for shard in shards {
                let tag = Ledger.idSpaceTag(forShard: shard)
                if let other = spaces[tag], other != shard {
                    throw ValidationError(
                        "shards '\(other)' and '\(shard)' would allocate hold and grant ids from the same space (\(tag)), so families could not move between them: rename one")
                }
                spaces[tag] = shard
            }
            let (client, keys) = try place.connect()
            defer { client.close() }
            do {
                if !shards.isEmpty {
                    try await client.put(keys.shardList, Array(try JSONEncoder().encode(shards)))
                }
                let (list, set) = try await ClusterCommand.shardList(client, keys)
                if place.json {
                    print(Output.json(["cluster": keys.cluster, "shards": list, "default": !set]))
                } else {
                    print(list.joined(separator: " ") + (set ? "" : " (the default: no list is set)"))
                }
            } catch {
                throw ClusterCommand.fail(error, json: place.json)
            }
        }
    }

    struct Placement: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The shard that holds an account.")
        @OptionGroup var place: Where
        @Argument var account: String

        func run() async throws {
            let (client, keys) = try place.connect()
            defer { client.close() }
            do {
                let text = try await client.range(keys.placement(account)).kvs.first.map { String(decoding: $0.value, as: UTF8.self) }
                let placement = text.flatMap(AccountPlacement.init(text:))
                let shard = placement?.shard ?? text
                if place.json {
                    var object: [String: Any] = ["account": account, "shard": shard as Any]
                    if let from = placement?.movedFrom, let at = placement?.movedAt {
                        object["movedFrom"] = from
                        object["movedAt"] = Instant(microsecondsSinceEpoch: at).description
                    }
                    print(Output.json(object))
                } else if let placement, let from = placement.movedFrom {
                    print("\(account): \(placement.shard) (moved from \(from) at \(Instant(microsecondsSinceEpoch: placement.movedAt)))")
                } else {
                    print(shard.map { "\(account): \($0)" } ?? "\(account): not placed (no router has created it)")
                }
                if shard == nil { throw ExitCode(ExitStatus.refused) }
            } catch let exit as ExitCode {
                throw exit
            } catch {
                throw ClusterCommand.fail(error, json: place.json)
            }
        }
    }

    struct Move: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Move an account family (a root account and its children) to another shard.",
            discussion: """
                Freezes the family on its shard (MOVE_FAMILY_OUT), reads it (FAMILY_TRANSFER), adds it \
                to the other shard (MOVE_FAMILY_IN), then points its placements in etcd there. Open \
                holds, grants, caps, subscriptions and alerts go with it, under the same ids. Requests \
                for the family are refused as moved for the moment in between; routers wait and send \
                them on. The shard it left keeps answering retries of requests it decided, which \
                routers ask it first about for the idempotency retention; until then the family \
                cannot move again. If the other shard refuses the family, the move is undone. \
                Running the same move again after an interruption finishes it. Needs the admin \
                token of the shards' nodes. docs/CLUSTER.md, "Moving a family".
                """)
        @OptionGroup var place: Where
        @Argument(help: "The family's root account.") var account: String
        @Option(help: "The shard to move it to.") var to: String
        @Option(help: "Token the shards' nodes accept as admin (also TOLLGATE_TOKEN).") var token: String?
        @Option(help: "File holding that token (also TOLLGATE_TOKEN_FILE).") var tokenFile: String?
        @Option(help: "PEM bundle of the CAs the nodes' certificates chain to (TLS to the nodes; also TOLLGATE_TLS_CA).") var tlsCa: String?
        @Option(help: "PEM client certificate for mTLS to the nodes (also TOLLGATE_TLS_CERT).") var tlsCert: String?
        @Option(help: "PEM private key of --tls-cert (also TOLLGATE_TLS_KEY).") var tlsKey: String?
        @Option(help: "The nodes' idempotency retention in hours: how long after a move the family cannot move again.") var keyRetentionHours: Int64 = 24
        @Option(help: "Deadline of each call to a node in milliseconds.") var timeoutMs: Int64 = 10_000

        func run() async throws {
            guard ClusterKeys.isValidName(to) else { throw ValidationError("'\(to)' is not a shard name") }
            guard (0...87_600).contains(keyRetentionHours) else { throw ValidationError("--key-retention-hours must be 0 to 87600 (ten years)") }
            let (etcd, keys) = try place.connect()
            defer { etcd.close() }
            let started = ContinuousClock.now
            do {
                let current = try await etcd.range(keys.placement(account))
                guard let kv = current.kvs.first, let placement = AccountPlacement(text: String(decoding: kv.value, as: UTF8.self)) else {
                    throw MoveError("\(account) has no placement in etcd: it was not created through a router")
                }
                let source = placement.shard
                guard source != to else { throw MoveError("\(account) is on \(to) already") }
                let now = Instant(microsecondsSinceEpoch: Int64(Date().timeIntervalSince1970 * 1_000_000))
                let retention = keyRetentionHours * 3_600_000_000
                if let from = placement.movedFrom, now.microsecondsSinceEpoch < placement.movedAt &+ retention {
                    throw MoveError(
                        "\(account) moved from \(from) at \(Instant(microsecondsSinceEpoch: placement.movedAt)); it can move again after \(Instant(microsecondsSinceEpoch: placement.movedAt &+ retention)), when \(from) no longer keeps keys it decided")
                }
                guard Ledger.idSpaceTag(forShard: source) != Ledger.idSpaceTag(forShard: to) else {
                    throw MoveError("shards \(source) and \(to) allocate ids from the same space: a family cannot move between them")
                }
                // One key per move (the placement's revision names it): running the same move again replays.
                let key = "move-\(kv.modRevision)-\(String(fnv1a64("\(account)\u{0}\(to)"), radix: 16))"
                let sourceNode = try await leaderClient(source, etcd: etcd, keys: keys)
                defer { Task { await sourceNode.close() } }
                let destination = try await leaderClient(to, etcd: etcd, keys: keys)
                defer { Task { await destination.close() } }

                try expectDone(try await sourceNode.send(.command(.moveFamilyOut(account: account, destination: to), key: key)), "\(source) refused to freeze \(account)")
                let transfer: [UInt8]
                switch try await sourceNode.send(.familyTransfer(account: account)) {
                case .transfer(let bytes): transfer = bytes
                case let other: throw MoveError("\(source) did not give \(account)'s family: \(Self.describe(other))")
                }
                guard let accounts = Ledger.transferAccounts(transfer, root: account) else { throw MoveError("\(source) sent a transfer that is not \(account)'s family") }
                let added = try await destination.send(.command(.moveFamilyIn(account: account, transfer: transfer), key: key))
                if case .answer(.done) = added {
                } else {
                    // Undone: the family taken back by the shard it left.
                    let undone = try await sourceNode.send(.command(.moveFamilyIn(account: account, transfer: transfer), key: "undo-" + key))
                    let state = (undone == .answer(.done)) ? "the move was undone: \(account) is on \(source) as before" : "undoing it failed too (\(Self.describe(undone))): run the same command again"
                    throw MoveError("\(to) refused \(account)'s family: \(Self.describe(added)); \(state)")
                }
                // Point every account of the family at its new shard; the root's placement only if
                // no one changed it meanwhile.
                let value = Array(AccountPlacement(shard: to, movedFrom: source, movedAt: now.microsecondsSinceEpoch).text.utf8)
                var first = true
                for chunk in stride(from: 0, to: accounts.count, by: 100).map({ Array(accounts[$0..<min($0 + 100, accounts.count)]) }) {
                    let result = try await etcd.txn(
                        first ? [.modRevision(keys.placement(account), .equal, kv.modRevision)] : [],
                        success: chunk.map { .put(key: keys.placement($0), value: value) }, failure: [])
                    if first && !result.succeeded { throw MoveError("\(account)'s placement changed during the move; run the same command again") }
                    first = false
                }
                let milliseconds = (ContinuousClock.now - started).components
                let elapsed = milliseconds.seconds * 1_000 + milliseconds.attoseconds / 1_000_000_000_000_000
                if place.json {
                    print(Output.json(["account": account, "from": source, "to": to, "accounts": accounts.count, "transferBytes": transfer.count, "milliseconds": elapsed]))
                } else {
                    print("moved \(account) (\(accounts.count) account\(accounts.count == 1 ? "" : "s"), \(transfer.count) bytes) from \(source) to \(to) in \(elapsed) ms")
                }
            } catch let exit as ExitCode {
                throw exit
            } catch {
                throw ClusterCommand.fail(error, json: place.json)
            }
        }

        struct MoveError: Error, CustomStringConvertible {
            var description: String
            init(_ description: String) { self.description = description }
        }

        static func describe(_ response: WireResponse) -> String {
            switch response {
            case .answer(.refused(let refusal)): "\(refusal.error.code.identifier): \(refusal.error)"
            case .error(let error): "\(error.status): \(error.message)"
            default: "\(response)"
            }
        }

        func expectDone(_ response: WireResponse, _ what: String) throws {
            guard case .answer(.done) = response else { throw MoveError("\(what): \(Self.describe(response))") }
        }

        /// A connection to the shard's leader, as etcd names it.
        func leaderClient(_ shard: String, etcd: EtcdClient, keys: ClusterKeys) async throws -> TollgateClient {
            let leader = try await ShardElection(client: etcd, keys: keys, shard: shard, record: LeaderRecord(node: "-", address: "-"), ttlSeconds: 1).current()
            guard let address = leader.record?.address else { throw MoveError("shard \(shard) has no leader now") }
            guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
                throw MoveError("shard \(shard)'s leader has address \(address), not HOST:PORT")
            }
            var host = String(address[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            let environment = ProcessInfo.processInfo.environment
            var secret = token ?? environment["TOLLGATE_TOKEN"]
            if secret == nil, let file = tokenFile ?? environment["TOLLGATE_TOKEN_FILE"] {
                guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw MoveError("cannot read the token file \(file)") }
                secret = text.trimmingCharacters(in: .whitespacesAndNewlines)
            }
            let ca = tlsCa ?? environment["TOLLGATE_TLS_CA"]
            let certificate = tlsCert ?? environment["TOLLGATE_TLS_CERT"]
            let key = tlsKey ?? environment["TOLLGATE_TLS_KEY"]
            let tls = ca != nil || certificate != nil || key != nil ? TLSOptions(caFile: ca, certificateFile: certificate, keyFile: key, serverName: nil) : nil
            let configuration = TollgateClient.Configuration(
                host: host, port: port, clientName: "tollgate-cli", token: secret ?? "", requestTimeoutMilliseconds: timeoutMs, tls: tls)
            do {
                return try await TollgateClient.connect(configuration)
            } catch {
                throw MoveError("cannot talk to shard \(shard)'s leader at \(address): \(error)")
            }
        }
    }
}
