import Testing
import TollgateServer

@Suite struct ConfigurationTests {
    @Test func defaultsWorkOnALaptop() {
        let configuration = ServerConfiguration()
        #expect(configuration.host == "127.0.0.1" && configuration.port == 7400 && configuration.adminPort == 7401)
        #expect(configuration.dataDirectory == "./tollgate-data")
    }

    @Test func fileThenEnvironmentThenFlagsEachWin() throws {
        var configuration = ServerConfiguration()
        try configuration.apply([("port", "7500"), ("maxConnections", "10"), ("adminPort", "off")], source: "file")
        try configuration.apply(ServerConfiguration.settings(fromEnvironment: ["TOLLGATE_PORT": "7600", "TOLLGATE_IDLE_TIMEOUT_MILLISECONDS": "1000", "HOME": "/root"]), source: "environment")
        try configuration.apply([("port", "7700")], source: "flags")
        #expect(configuration.port == 7700)
        #expect(configuration.maxConnections == 10)
        #expect(configuration.adminPort == nil)
        #expect(configuration.idleTimeoutMilliseconds == 1_000)
    }

    @Test func badSettingsAreNamed() {
        var configuration = ServerConfiguration()
        #expect(throws: ConfigurationError("flags: port must be a whole number from 0 to 65535, not \"seventy\"")) {
            try configuration.apply([("port", "seventy")], source: "flags")
        }
        #expect(throws: ConfigurationError.self) { try configuration.apply([("maxFrameBody", "10")], source: "file") }
        do {
            try configuration.apply([("prot", "1")], source: "tollgate.yaml")
            Issue.record("unknown setting accepted")
        } catch {
            #expect(error.description.hasPrefix("tollgate.yaml: unknown setting \"prot\""))
        }
    }

    /// A cluster's settings are checked together: the journal modes a cluster allows, the frame
    /// size etcd takes, endpoints and names.
    @Test func aClusterConfigurationIsCheckedWhole() throws {
        func refusal(_ settings: [(String, String)]) -> String? {
            var configuration = ServerConfiguration()
            do {
                try configuration.apply(settings, source: "test")
                return nil
            } catch {
                return error.description
            }
        }
        #expect(refusal([("etcdEndpoints", "127.0.0.1:2379"), ("journalMode", "replicated")]) == nil)
        #expect(refusal([("etcdEndpoints", "127.0.0.1:2379"), ("journalMode", "sync")])?.contains("must be replicated") == true)
        #expect(refusal([("journalMode", "replicated")])?.contains("needs a cluster") == true)
        #expect(refusal([("etcdEndpoints", "127.0.0.1:2379"), ("maxFrameBody", "2000000")])?.contains("at most 1048576") == true)
        #expect(refusal([("maxFrameBody", "2000000")]) == nil)
        #expect(refusal([("etcdEndpoints", "127.0.0.1:2379,https://etcd:2379")])?.contains("\"https://etcd:2379\" is not") == true)
        #expect(refusal([("shard", "S0")])?.contains("shard must be") == true)
        #expect(refusal([("router", "true")])?.contains("router mode needs etcdEndpoints") == true)
        #expect(refusal([("router", "true"), ("etcdEndpoints", "e:2379")]) == nil)
    }

    /// A setting that no longer does anything still loads, so an old file starts the server;
    /// it is reported instead, and a bad value is still an error.
    @Test func aRetiredSettingLoadsAndIsReported() throws {
        var configuration = ServerConfiguration()
        try configuration.apply([("decisionThread", "dedicated")], source: "tollgate.yaml")
        #expect(configuration.retiredSettings.count == 1 && configuration.retiredSettings[0].contains("no longer does anything"))
        #expect(!ServerConfiguration.settingNames.contains("decisionThread"))
        #expect(throws: ConfigurationError.self) { try configuration.apply([("decisionThread", "sideways")], source: "file") }
        // The old table's retention floor: nothing is refused any more, so it does nothing.
        try configuration.apply([("idempotencyMinimumRetentionMinutes", "15")], source: "tollgate.yaml")
        #expect(configuration.retiredSettings.count == 2 && configuration.retiredSettings[1].contains("idempotencyMinimumRetentionMinutes no longer does anything"))
        #expect(!ServerConfiguration.settingNames.contains("idempotencyMinimumRetentionMinutes"))
        try configuration.apply([("idempotencyDiskKeysMax", "5000000"), ("idempotencyDiskGigabytesMax", "4")], source: "file")
        #expect(configuration.idempotencyDiskKeysMax == 5_000_000 && configuration.idempotencyDiskGigabytesMax == 4)
        #expect(throws: ConfigurationError.self) { try configuration.apply([("idempotencyDiskKeysMax", "10")], source: "file") }
        // The async window must leave room for the flush interval.
        #expect(throws: ConfigurationError.self) {
            try configuration.apply([("journalFlushIntervalMilliseconds", "100"), ("journalAsyncWindowMilliseconds", "150")], source: "file")
        }
    }

    @Test func environmentNamesFollowTheSettings() {
        #expect(ServerConfiguration.environmentName("adminPort") == "TOLLGATE_ADMIN_PORT")
        #expect(ServerConfiguration.environmentName("idempotencyKeysMax") == "TOLLGATE_IDEMPOTENCY_KEYS_MAX")
        #expect(ServerConfiguration.environmentName("webhookURL") == "TOLLGATE_WEBHOOK_URL")
        #expect(ServerConfiguration.environmentName("tlsClientCAFile") == "TOLLGATE_TLS_CLIENT_CA_FILE")
        let settings = ServerConfiguration.settings(fromEnvironment: ["TOLLGATE_WEBHOOK_URL": "http://billing:8080/events", "TOLLGATE_TLS_CLIENT_CA_FILE": "/ca.pem"])
        #expect(settings.map(\.0).sorted() == ["tlsClientCAFile", "webhookURL"])
    }

    @Test func printedSettingsReadBackAsTheSameConfiguration() throws {
        var configuration = ServerConfiguration()
        try configuration.apply(
            [
                ("port", "7500"), ("adminPort", "off"), ("dataDirectory", "/var/lib/x"), ("tlsCertificateFile", "/c.pem"), ("tlsKeyFile", "/k.pem"),
                ("tlsClientCAFile", "/ca.pem"), ("tlsClientCertificates", "optional"), ("webhookURL", "https://billing/events"),
                ("credentialsFile", "/creds.yaml"), ("idempotencyRetentionHours", "48"), ("recentActivityKept", "0"), ("dashboardAccountsMax", "3"),
                ("etcdEndpoints", "10.0.0.9:2379, http://10.0.0.8:2379"), ("nodeName", "n1"), ("advertiseAddress", "10.0.0.1:7400"), ("upstreamToken", "t"),
                ("upstreamCAFile", "/nodes-ca.pem"), ("upstreamCertificateFile", "/router.pem"), ("upstreamKeyFile", "/router.key"),
            ], source: "test")
        let printed = configuration.settingValues
        // Every setting is printed once it is set.
        #expect(printed.map(\.0) == ServerConfiguration.settingNames)
        var readBack = ServerConfiguration()
        try readBack.apply(printed, source: "printed")
        #expect(readBack == configuration)
        // Unset ones are left out rather than printed empty.
        #expect(!ServerConfiguration().settingValues.map(\.0).contains("webhookURL"))
    }
}
