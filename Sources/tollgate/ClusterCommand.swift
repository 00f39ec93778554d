import ArgumentParser
import Foundation
import TollgateCluster

/// `tollgate cluster`: a cluster's state in etcd (docs/CLUSTER.md) — who leads each shard and
/// how far its journal goes, the shards new account families are placed on, and where an
/// account is. It talks to etcd, not to tollgated.
struct ClusterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster", abstract: "A cluster's shards, leaders and placements, read from (and the shard list written to) etcd.",
        subcommands: [Status.self, Shards.self, Placement.self])

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
                let shard = try await client.range(keys.placement(account)).kvs.first.map { String(decoding: $0.value, as: UTF8.self) }
                if place.json {
                    print(Output.json(["account": account, "shard": shard as Any]))
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
}
