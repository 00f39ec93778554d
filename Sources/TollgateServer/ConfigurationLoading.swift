import TollgateCluster
import TollgateWire

/// Reading `ServerConfiguration` from settings: a config file's keys, environment variables
/// and command-line flags all arrive as (name, text) pairs and are applied in that order, so
/// flags win over the environment, which wins over the file.
extension ServerConfiguration {
    /// The setting names, as a config file spells them. The environment uses the same names
    /// in upper snake case after `TOLLGATE_` (`adminPort` → `TOLLGATE_ADMIN_PORT`).
    public static let settingNames = [
        "host", "port", "adminHost", "adminPort", "dataDirectory", "maxFrameBody", "maxInFlight", "maxBatchItems",
        "maxConnections", "adminMaxConnections", "adminRequestTimeoutMilliseconds", "idleTimeoutMilliseconds", "sweepIntervalMilliseconds", "shutdownGraceMilliseconds", "threads",
        "serverName", "journalMode", "journalFlushIntervalMilliseconds", "journalAsyncWindowMilliseconds", "journalSegmentBytes", "checkpointIntervalSeconds", "journalRetentionHours", "idempotencyKeysMax", "idempotencyRetentionHours", "idempotencyDiskKeysMax", "idempotencyDiskGigabytesMax",
        "tlsCertificateFile", "tlsKeyFile", "tlsClientCAFile", "tlsClientCertificates", "tlsMinimumVersion", "credentialsFile",
        "allowPlaintext", "reloadCheckSeconds", "handshakeTimeoutMilliseconds", "webhookURL", "webhookTimeoutMilliseconds", "clockOffsetSeconds",
        "recentActivityKept", "dashboardAccountsMax",
        "etcdEndpoints", "clusterName", "shard", "nodeName", "advertiseAddress", "leaderLeaseSeconds", "etcdTimeoutMilliseconds",
        "router", "routerRetrySeconds", "upstreamToken", "upstreamCAFile", "upstreamCertificateFile", "upstreamKeyFile",
    ]

    /// Every setting with the value in force, in `settingNames` order, as a config file
    /// would give it (`tollgated --print-config`): fed back, it gives this configuration.
    /// Settings that are unset (no TLS file, no webhook) are left out.
    public var settingValues: [(String, String)] {
        let values: [String: String?] = [
            "host": host, "port": "\(port)", "adminHost": adminHost, "adminPort": adminPort.map { "\($0)" } ?? "off",
            "dataDirectory": dataDirectory, "maxFrameBody": "\(maxFrameBody)", "maxInFlight": "\(maxInFlight)", "maxBatchItems": "\(maxBatchItems)",
            "maxConnections": "\(maxConnections)", "adminMaxConnections": "\(adminMaxConnections)",
            "adminRequestTimeoutMilliseconds": "\(adminRequestTimeoutMilliseconds)", "idleTimeoutMilliseconds": "\(idleTimeoutMilliseconds)",
            "sweepIntervalMilliseconds": "\(sweepIntervalMilliseconds)", "shutdownGraceMilliseconds": "\(shutdownGraceMilliseconds)",
            "threads": "\(threads)", "serverName": serverName, "journalMode": journalMode.rawValue,
            "journalFlushIntervalMilliseconds": "\(journalFlushIntervalMilliseconds)",
            "journalAsyncWindowMilliseconds": "\(journalAsyncWindowMilliseconds)", "journalSegmentBytes": "\(journalSegmentBytes)",
            "checkpointIntervalSeconds": "\(checkpointIntervalSeconds)", "journalRetentionHours": "\(journalRetentionHours)",
            "idempotencyKeysMax": "\(limits.idempotencyKeysMax)",
            "idempotencyRetentionHours": "\(limits.idempotencyRetentionMicroseconds / 3_600_000_000)",
            "idempotencyDiskKeysMax": "\(idempotencyDiskKeysMax)", "idempotencyDiskGigabytesMax": "\(idempotencyDiskGigabytesMax)",
            "tlsCertificateFile": tlsCertificateFile, "tlsKeyFile": tlsKeyFile, "tlsClientCAFile": tlsClientCAFile,
            "tlsClientCertificates": tlsClientCertificates?.rawValue, "tlsMinimumVersion": tlsMinimumVersion.rawValue,
            "credentialsFile": credentialsFile, "allowPlaintext": "\(allowPlaintext)", "reloadCheckSeconds": "\(reloadCheckSeconds)",
            "handshakeTimeoutMilliseconds": "\(handshakeTimeoutMilliseconds)", "webhookURL": webhookURL,
            "webhookTimeoutMilliseconds": "\(webhookTimeoutMilliseconds)", "clockOffsetSeconds": "\(clockOffsetSeconds)",
            "recentActivityKept": "\(recentActivityKept)", "dashboardAccountsMax": "\(dashboardAccountsMax)",
            "etcdEndpoints": etcdEndpoints.isEmpty ? nil : etcdEndpoints.joined(separator: ","),
            "clusterName": clusterName, "shard": shard, "nodeName": nodeName.isEmpty ? nil : nodeName,
            "advertiseAddress": advertiseAddress.isEmpty ? nil : advertiseAddress,
            "leaderLeaseSeconds": "\(leaderLeaseSeconds)", "etcdTimeoutMilliseconds": "\(etcdTimeoutMilliseconds)",
            "router": "\(router)", "routerRetrySeconds": "\(routerRetrySeconds)", "upstreamToken": upstreamToken.isEmpty ? nil : upstreamToken,
            "upstreamCAFile": upstreamCAFile, "upstreamCertificateFile": upstreamCertificateFile, "upstreamKeyFile": upstreamKeyFile,
        ]
        return Self.settingNames.compactMap { name in values[name].flatMap { $0 }.map { (name, $0) } }
    }

    /// `adminPort` → `TOLLGATE_ADMIN_PORT`; an acronym stays one word: `webhookURL` →
    /// `TOLLGATE_WEBHOOK_URL`, `tlsClientCAFile` → `TOLLGATE_TLS_CLIENT_CA_FILE`.
    public static func environmentName(_ setting: String) -> String {
        var name = "TOLLGATE_"
        let characters = Array(setting)
        for (index, character) in characters.enumerated() {
            if character.isUppercase && index > 0 {
                let previous = characters[index - 1]
                let nextIsLower = index + 1 < characters.count && characters[index + 1].isLowercase
                if !previous.isUppercase || nextIsLower { name.append("_") }
            }
            name.append(contentsOf: character.uppercased())
        }
        return name
    }

    /// The settings found in an environment.
    public static func settings(fromEnvironment environment: [String: String]) -> [(String, String)] {
        settingNames.compactMap { name in environment[environmentName(name)].map { (name, $0) } }
    }

    /// Applies settings in order; an unknown name or a bad value is an error naming both and
    /// where they came from.
    public mutating func apply(_ settings: [(String, String)], source: String) throws(ConfigurationError) {
        for (name, value) in settings {
            try apply(name, value, source: source)
        }
        try validate()
    }

    mutating func apply(_ name: String, _ value: String, source: String) throws(ConfigurationError) {
        func integer(_ range: ClosedRange<Int64>) throws(ConfigurationError) -> Int64 {
            guard let number = Int64(value.trimmingSpaces), range.contains(number) else {
                throw ConfigurationError("\(source): \(name) must be a whole number from \(range.lowerBound) to \(range.upperBound), not \"\(value)\"")
            }
            return number
        }
        switch name {
        case "host": host = value
        case "port": port = Int(try integer(0...65_535))
        case "adminHost": adminHost = value
        case "adminPort":
            let lowered = value.lowercased()
            adminPort = (lowered == "off" || lowered == "none") ? nil : Int(try integer(0...65_535))
        case "dataDirectory": dataDirectory = value
        case "maxFrameBody": maxFrameBody = Int(try integer(1_024...Int64(FrameHeader.largestBody)))
        case "maxInFlight": maxInFlight = Int(try integer(1...65_535))
        case "maxBatchItems": maxBatchItems = Int(try integer(1...65_535))
        case "maxConnections": maxConnections = Int(try integer(1...1_000_000))
        case "adminMaxConnections": adminMaxConnections = Int(try integer(1...10_000))
        case "adminRequestTimeoutMilliseconds": adminRequestTimeoutMilliseconds = try integer(100...600_000)
        case "idleTimeoutMilliseconds": idleTimeoutMilliseconds = try integer(10...86_400_000)
        case "sweepIntervalMilliseconds": sweepIntervalMilliseconds = try integer(1...60_000)
        case "shutdownGraceMilliseconds": shutdownGraceMilliseconds = try integer(0...600_000)
        case "threads": threads = Int(try integer(0...256))
        case "serverName": serverName = value
        case "journalMode":
            guard let mode = JournalModeSetting(rawValue: value) else {
                throw ConfigurationError("\(source): journalMode must be async, sync, none or replicated, not \"\(value)\"")
            }
            journalMode = mode
        case "journalFlushIntervalMilliseconds": journalFlushIntervalMilliseconds = try integer(1...1_000)
        case "journalSegmentBytes": journalSegmentBytes = Int(try integer(4_096...4_294_967_296))
        case "checkpointIntervalSeconds": checkpointIntervalSeconds = try integer(0...86_400)
        case "journalRetentionHours": journalRetentionHours = try integer(0...87_600)
        case "journalAsyncWindowMilliseconds": journalAsyncWindowMilliseconds = try integer(1...60_000)
        case "decisionThread":
            guard value == "connection" || value == "dedicated" else {
                throw ConfigurationError("\(source): decisionThread must be connection or dedicated, not \"\(value)\"")
            }
            retiredSettings.append(
                "\(source): decisionThread (\(value)) no longer does anything: decisions always run on the event loop that read the request (bench/README.md says why); delete the setting")
        case "idempotencyKeysMax": limits.idempotencyKeysMax = Int(try integer(1...1_000_000_000))
        case "idempotencyRetentionHours": limits.idempotencyRetentionMicroseconds = try integer(1...8_760) * 3_600_000_000
        case "idempotencyMinimumRetentionMinutes":
            _ = try integer(0...525_600)
            retiredSettings.append(
                "\(source): idempotencyMinimumRetentionMinutes no longer does anything: keys the in-memory table lets go of are kept on disk for the whole retention, and nothing is refused because a table is full (README, \"Idempotency\"); delete the setting")
        case "idempotencyDiskKeysMax": idempotencyDiskKeysMax = Int(try integer(1_000...10_000_000_000))
        case "idempotencyDiskGigabytesMax": idempotencyDiskGigabytesMax = Int(try integer(1...1_000_000))
        case "tlsCertificateFile": tlsCertificateFile = value.isEmpty ? nil : value
        case "tlsKeyFile": tlsKeyFile = value.isEmpty ? nil : value
        case "tlsClientCAFile": tlsClientCAFile = value.isEmpty ? nil : value
        case "tlsClientCertificates":
            guard let mode = TLSSettings.ClientCertificates(rawValue: value) else {
                throw ConfigurationError("\(source): tlsClientCertificates must be none, optional or required, not \"\(value)\"")
            }
            tlsClientCertificates = mode
        case "tlsMinimumVersion":
            guard let version = TLSSettings.MinimumVersion(rawValue: value) else {
                throw ConfigurationError("\(source): tlsMinimumVersion must be 1.2 or 1.3, not \"\(value)\"")
            }
            tlsMinimumVersion = version
        case "credentialsFile": credentialsFile = value.isEmpty ? nil : value
        case "allowPlaintext":
            switch value.lowercased() {
            case "true", "yes", "1": allowPlaintext = true
            case "false", "no", "0": allowPlaintext = false
            default: throw ConfigurationError("\(source): allowPlaintext must be true or false, not \"\(value)\"")
            }
        case "reloadCheckSeconds": reloadCheckSeconds = try integer(0...86_400)
        case "handshakeTimeoutMilliseconds": handshakeTimeoutMilliseconds = try integer(10...600_000)
        case "webhookURL":
            guard value.isEmpty || WebhookDelivery.parse(value) != nil else {
                throw ConfigurationError("\(source): webhookURL must be http://HOST[:PORT]/PATH or https://…, not \"\(value)\"")
            }
            webhookURL = value.isEmpty ? nil : value
        case "webhookTimeoutMilliseconds": webhookTimeoutMilliseconds = try integer(100...600_000)
        case "clockOffsetSeconds": clockOffsetSeconds = try integer(-315_360_000...315_360_000)
        case "recentActivityKept": recentActivityKept = Int(try integer(0...10_000_000))
        case "dashboardAccountsMax": dashboardAccountsMax = Int(try integer(1...10_000))
        case "etcdEndpoints":
            let parts = value.split(separator: ",").map { String(String($0).trimmingSpaces) }.filter { !$0.isEmpty }
            for part in parts where !Self.isEndpoint(part) {
                throw ConfigurationError("\(source): etcdEndpoints must be HOST:PORT or http://HOST:PORT, comma-separated; \"\(part)\" is not")
            }
            etcdEndpoints = parts
        case "clusterName", "shard", "nodeName":
            guard Self.isClusterName(value) || (name == "nodeName" && value.isEmpty) else {
                throw ConfigurationError("\(source): \(name) must be 1 to 63 of a-z, 0-9, '-', '_' and '.', not starting with '.', not \"\(value)\"")
            }
            if name == "clusterName" { clusterName = value } else if name == "shard" { shard = value } else { nodeName = value }
        case "advertiseAddress":
            guard value.isEmpty || Self.isEndpoint(value) else {
                throw ConfigurationError("\(source): advertiseAddress must be HOST:PORT, not \"\(value)\"")
            }
            advertiseAddress = value
        case "leaderLeaseSeconds": leaderLeaseSeconds = try integer(1...60)
        case "router":
            switch value.lowercased() {
            case "true", "yes", "1": router = true
            case "false", "no", "0": router = false
            default: throw ConfigurationError("\(source): router must be true or false, not \"\(value)\"")
            }
        case "routerRetrySeconds": routerRetrySeconds = try integer(0...600)
        case "upstreamToken": upstreamToken = value
        case "upstreamCAFile": upstreamCAFile = value.isEmpty ? nil : value
        case "upstreamCertificateFile": upstreamCertificateFile = value.isEmpty ? nil : value
        case "upstreamKeyFile": upstreamKeyFile = value.isEmpty ? nil : value
        case "etcdTimeoutMilliseconds": etcdTimeoutMilliseconds = try integer(50...60_000)
        default:
            throw ConfigurationError("\(source): unknown setting \"\(name)\"; known settings are \(ServerConfiguration.settingNames.joined(separator: ", "))")
        }
    }

    /// HOST:PORT (or http://HOST:PORT) with a port from 1 to 65535: what the etcd client takes.
    static func isEndpoint(_ text: String) -> Bool { EtcdEndpoint(text) != nil }

    /// The names of etcd keys' parts.
    static func isClusterName(_ name: String) -> Bool { ClusterKeys.isValidName(name) }

    func validate() throws(ConfigurationError) {
        guard !host.isEmpty, !dataDirectory.isEmpty else { throw ConfigurationError("host and dataDirectory must not be empty") }
        if router && etcdEndpoints.isEmpty {
            throw ConfigurationError("router mode needs etcdEndpoints: the shard map and each shard's leader are in etcd")
        }
        if isClustered {
            // One command is one journal record, sent to etcd whole: it must fit etcd's default
            // request limit (1.5 MiB) with room to spare.
            guard maxFrameBody <= 1 << 20 else {
                throw ConfigurationError(
                    "in a cluster maxFrameBody must be at most 1048576 (one command's record goes to etcd whole, and etcd refuses requests over 1.5 MiB by default), not \(maxFrameBody)")
            }
            guard journalMode == .replicated || journalMode == .async else {
                throw ConfigurationError(
                    "in a cluster (etcdEndpoints set) journalMode must be replicated (answers wait for etcd's commit: a failover loses no acknowledged change) or async (they do not: a failover can lose up to journalAsyncWindowMilliseconds), not \(journalMode.rawValue)")
            }
        } else if journalMode == .replicated && !router {
            throw ConfigurationError("journalMode replicated needs a cluster: set etcdEndpoints (docs/CLUSTER.md)")
        }
        guard journalAsyncWindowMilliseconds >= 2 * journalFlushIntervalMilliseconds else {
            throw ConfigurationError(
                "journalAsyncWindowMilliseconds (\(journalAsyncWindowMilliseconds)) must be at least twice journalFlushIntervalMilliseconds (\(journalFlushIntervalMilliseconds)), or answers would wait for nearly every flush")
        }
        guard (upstreamCertificateFile == nil) == (upstreamKeyFile == nil) else {
            throw ConfigurationError("mTLS to the cluster's nodes needs both upstreamCertificateFile and upstreamKeyFile")
        }
        guard (tlsCertificateFile == nil) == (tlsKeyFile == nil) else {
            throw ConfigurationError("TLS needs both tlsCertificateFile and tlsKeyFile")
        }
        if tlsCertificateFile == nil && (tlsClientCAFile != nil || tlsClientCertificates != nil) {
            throw ConfigurationError("tlsClientCAFile and tlsClientCertificates need TLS: set tlsCertificateFile and tlsKeyFile")
        }
        if let mode = tlsClientCertificates, mode != .none, tlsClientCAFile == nil {
            throw ConfigurationError("tlsClientCertificates \(mode.rawValue) needs tlsClientCAFile, the CAs client certificates must chain to")
        }
    }
}

public struct ConfigurationError: Error, CustomStringConvertible, Equatable {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}

extension String {
    var trimmingSpaces: Substring {
        var view = self[...]
        while view.first == " " { view.removeFirst() }
        while view.last == " " { view.removeLast() }
        return view
    }
}
