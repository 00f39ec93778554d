import ArgumentParser
import Foundation
import Logging
import ServiceLifecycle
import TollgateServer
import UnixSignals
import Yams

/// `tollgated`: the Tollgate server. With no arguments it listens on 127.0.0.1:7400 (admin
/// HTTP on 7401) and keeps data under ./tollgate-data.
@main
struct Tollgated: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tollgated",
        abstract: "The Tollgate credit gate server.",
        discussion: """
            Settings come from, in increasing precedence: the config file (YAML or JSON, a mapping \
            of setting names to values), TOLLGATE_* environment variables (TOLLGATE_ADMIN_PORT for \
            adminPort, TOLLGATE_WEBHOOK_URL for webhookURL), and these flags. Settings: \(ServerConfiguration.settingNames.joined(separator: ", ")).
            """)

    @Option(help: "A YAML or JSON config file (also TOLLGATE_CONFIG).") var config: String?
    @Option(help: "Address of the gate port (default 127.0.0.1).") var host: String?
    @Option(help: "Gate port (default 7400; 0 picks a free port).") var port: Int?
    @Option(help: "Address of the admin HTTP port (default 127.0.0.1).") var adminHost: String?
    @Option(help: "Admin HTTP port: /healthz, /readyz, /metrics, the read API (/api/v1) and the dashboard (default 7401; 'off' disables it).") var adminPort: String?
    @Option(help: "Data directory (default ./tollgate-data).") var dataDir: String?
    @Option(help: "Largest frame body in bytes (default 65536).") var maxFrameBody: Int?
    @Option(help: "Requests a client may keep unanswered per connection, told in HELLO (default 1024); past twice this many unsent answers, requests are answered tooManyInFlight.") var maxInFlight: Int?
    @Option(help: "Open connections (default 1024).") var maxConnections: Int?
    @Option(help: "Close connections with no complete request for this long, in ms (default 300000).") var idleTimeoutMs: Int?
    @Option(help: "How often expired holds are released, in ms (default 100).") var sweepIntervalMs: Int?
    @Option(help: "Event-loop threads (default: one per core).") var threads: Int?
    @Option(help: "Journal mode: async (default; fsync every interval), sync (answers wait for fsync), none (nothing kept), or in a cluster replicated (answers wait for etcd's commit).")
    var journalMode: String?
    @Option(help: "How often the async journal is fsynced, in ms (default 10).")
    var journalFlushIntervalMs: Int?
    @Option(help: "Async mode's loss window, in ms (default 100): the acknowledged changes a crash can lose span at most this; answers wait when the journal falls further behind.")
    var journalAsyncWindowMs: Int?
    @Option(help: "PEM certificate (chain) of the gate port: with --tls-key, the port speaks TLS (1.3 unless --tls-min-version 1.2).")
    var tlsCert: String?
    @Option(help: "PEM private key of --tls-cert.") var tlsKey: String?
    @Option(help: "PEM bundle of the CAs client certificates must chain to (mTLS; required unless --tls-client-certificates optional).")
    var tlsClientCa: String?
    @Option(help: "Client certificates: none, optional or required (default: required with --tls-client-ca, else none).")
    var tlsClientCertificates: String?
    @Option(help: "Lowest TLS version accepted: 1.3 (default) or 1.2.") var tlsMinVersion: String?
    @Option(help: "Identities, roles and scopes (YAML). Without one, an admin token is written to <data-dir>/admin.token.")
    var credentials: String?
    @Option(help: "Shift the server's clock by this many seconds (demos and tests: days passing, periods turning).")
    var clockOffsetSeconds: Int?
    @Flag(help: "Allow plaintext on an address that is not loopback (tokens then cross the network in the clear).")
    var allowPlaintext = false
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (also TOLLGATE_LOG_LEVEL; default info).")
    var logLevel: String?
    @Option(help: "Log format: text, or json for one JSON object per line (also TOLLGATE_LOG_FORMAT; default text).")
    var logFormat: String?

    @Option(help: "etcd's client endpoints, comma-separated (HOST:PORT): this node is then one replica of --shard in --cluster (docs/CLUSTER.md).")
    var etcd: String?
    @Option(help: "The cluster's name: its keys in etcd are under /tollgate/NAME/ (default tollgate).") var cluster: String?
    @Option(help: "The shard this node serves (default s0).") var shard: String?
    @Option(help: "This node's name in its shard (default: the host name).") var node: String?
    @Option(help: "The gate address clients and routers reach this node at, HOST:PORT (default: the listening host and port).")
    var advertise: String?
    @Flag(help: "Router mode: no ledger; each request goes to the leader of its account's shard (needs --etcd; docs/CLUSTER.md).")
    var router = false

    @Flag(help: "Print the settings in force (file, environment and flags applied), as a config file, and exit.")
    var printConfig = false

    func run() async throws {
        let environment = ProcessInfo.processInfo.environment
        var configuration = ServerConfiguration()
        do {
            if let file = config ?? environment["TOLLGATE_CONFIG"] {
                try configuration.apply(try Self.settings(fromFile: file), source: file)
            }
            try configuration.apply(ServerConfiguration.settings(fromEnvironment: environment), source: "environment")
            try configuration.apply(flagSettings(), source: "flags")
        } catch let error as ConfigurationError {
            throw ValidationError(error.description)
        }
        if printConfig {
            for (name, value) in configuration.settingValues {
                // Quoted as YAML would need it; numbers and booleans are read back as text anyway.
                print("\(name): \"\(value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\""))\"")
            }
            return
        }
        let levelName = logLevel ?? environment["TOLLGATE_LOG_LEVEL"] ?? "info"
        guard let level = Logger.Level(rawValue: levelName) else { throw ValidationError("unknown log level \"\(levelName)\"") }
        let formatName = logFormat ?? environment["TOLLGATE_LOG_FORMAT"] ?? "text"
        guard formatName == "text" || formatName == "json" else { throw ValidationError("log format must be text or json, not \"\(formatName)\"") }
        LoggingSystem.bootstrap { label in
            if formatName == "json" {
                var handler = JSONLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "tollgated")
        let server = TollgateServer(configuration: configuration, logger: logger)
        let group = ServiceGroup(
            configuration: .init(
                services: [
                    .init(service: HangupReloader(server: server, logger: logger)),
                    .init(service: server, successTerminationBehavior: .gracefullyShutdownGroup),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch let error as ServerError {
            logger.critical("\(error.description)")
            throw ExitCode(error.restart ? 75 : 1)
        }
    }

    func flagSettings() -> [(String, String)] {
        var settings: [(String, String)] = []
        func add(_ name: String, _ value: (some CustomStringConvertible)?) {
            if let value { settings.append((name, value.description)) }
        }
        add("host", host)
        add("port", port)
        add("adminHost", adminHost)
        add("adminPort", adminPort)
        add("dataDirectory", dataDir)
        add("maxFrameBody", maxFrameBody)
        add("maxInFlight", maxInFlight)
        add("maxConnections", maxConnections)
        add("idleTimeoutMilliseconds", idleTimeoutMs)
        add("sweepIntervalMilliseconds", sweepIntervalMs)
        add("threads", threads)
        add("journalMode", journalMode)
        add("etcdEndpoints", etcd)
        add("clusterName", cluster)
        add("shard", shard)
        add("nodeName", node)
        add("advertiseAddress", advertise)
        if router { add("router", "true") }
        add("journalFlushIntervalMilliseconds", journalFlushIntervalMs)
        add("journalAsyncWindowMilliseconds", journalAsyncWindowMs)
        add("tlsCertificateFile", tlsCert)
        add("tlsKeyFile", tlsKey)
        add("tlsClientCAFile", tlsClientCa)
        add("tlsClientCertificates", tlsClientCertificates)
        add("tlsMinimumVersion", tlsMinVersion)
        add("credentialsFile", credentials)
        add("clockOffsetSeconds", clockOffsetSeconds)
        if allowPlaintext { settings.append(("allowPlaintext", "true")) }
        return settings
    }

    /// A config file's top-level mapping, with scalar values as text.
    static func settings(fromFile path: String) throws -> [(String, String)] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw ValidationError("cannot read the config file \(path)")
        }
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch {
            throw ValidationError("\(path) is not valid YAML or JSON: \(error)")
        }
        guard let mapping = node?.mapping else { throw ValidationError("\(path) must be a mapping of setting names to values") }
        return try mapping.map { key, value in
            guard let name = key.string, let text = value.scalar?.string else {
                throw ValidationError("\(path): every setting must be a name with a single value")
            }
            return (name, text)
        }
    }
}

/// SIGHUP re-reads the TLS certificate, key and client CA, and the credentials file.
struct HangupReloader: Service {
    let server: TollgateServer
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        for await _ in signals.cancelOnGracefulShutdown() {
            let outcome = server.reload()
            logger.notice("SIGHUP: \(outcome)")
        }
    }
}
