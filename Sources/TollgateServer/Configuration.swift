import TollgateLedger

/// Everything `tollgated` can be told, with defaults that work on a laptop: loopback only,
/// the gate on 7400, the admin HTTP port on 7401, data under ./tollgate-data.
public struct ServerConfiguration: Sendable, Equatable {
    public var host = "127.0.0.1"
    public var port = 7400
    public var adminHost = "127.0.0.1"
    /// `nil` disables the admin HTTP port.
    public var adminPort: Int? = 7401
    public var dataDirectory = "./tollgate-data"
    /// The largest frame body accepted, in bytes.
    public var maxFrameBody = 65_536
    /// Answers one connection may have written but not yet handed to the kernel before new
    /// requests are refused with `tooManyInFlight`; reading also pauses while the socket's
    /// write buffer is full.
    public var maxInFlight = 1_024
    public var maxBatchItems = 1_024
    public var maxConnections = 1_024
    /// Open connections to the admin HTTP port, counted apart from the gate's: past it a new
    /// one is answered 503 and closed.
    /// Settings that are accepted but no longer do anything, with what to do about them;
    /// tollgated logs them at start, so an old config file still starts the server.
    public var retiredSettings: [String] = []
    public var adminMaxConnections = 64
    /// How long an admin connection may take to send a whole request, and stay open idle
    /// between requests.
    public var adminRequestTimeoutMilliseconds: Int64 = 10_000
    /// A connection that completes no request for this long is told `idleTimeout` and closed.
    public var idleTimeoutMilliseconds: Int64 = 300_000
    /// How often holds past their deadline are released; a hold outlives its deadline by at
    /// most this much.
    public var sweepIntervalMilliseconds: Int64 = 100
    /// How long a graceful shutdown waits for connections to finish before closing them.
    public var shutdownGraceMilliseconds: Int64 = 10_000
    /// Event-loop threads; 0 means one per core.
    public var threads = 0
    public var serverName = "tollgated"
    public var limits = LedgerLimits()
    /// `async` (the default): answers leave at once and the journal is fsynced every
    /// `journalFlushIntervalMilliseconds`, the window a crash can lose. `sync`: every answer to
    /// a mutation waits for the fsync that keeps it. `none`: nothing is kept (tests, benchmarks).
    /// In a cluster, `replicated` (answers wait for etcd's commit) or `async` (they do not:
    /// a failover can lose the window); docs/CLUSTER.md.
    public var journalMode = JournalModeSetting.async
    public var journalFlushIntervalMilliseconds: Int64 = 10
    /// `async` mode's promise: the acknowledged changes a crash can lose span at most this
    /// long. When the writer falls further behind (a stalled disk), answers wait for the
    /// journal, as in `sync` mode, until it catches up.
    public var journalAsyncWindowMilliseconds: Int64 = 100
    public var journalSegmentBytes = 64 << 20
    /// How often a full checkpoint is written in the background (0: never), so recovery
    /// replays only the journal after it.
    public var checkpointIntervalSeconds: Int64 = 300
    /// Segments wholly inside the newest checkpoint are deleted once older than this.
    public var journalRetentionHours: Int64 = 168
    /// The disk tier of idempotency keys (DATA/keys), which holds every key the in-memory
    /// table (`limits.idempotencyKeysMax`) lets go of until its retention ends: at most this
    /// many keys (about 2.2 bytes of memory each for filters and page indexes) and this many
    /// gigabytes of files. Past either, the keys expiring first are forgotten early (logged,
    /// on /metrics); nothing is refused. The defaults hold 24 hours at 2,000 mutations a second.
    public var idempotencyDiskKeysMax = 200_000_000
    public var idempotencyDiskGigabytesMax = 32

    public enum JournalModeSetting: String, Sendable, Equatable {
        /// `replicated`: in a cluster, every answer waits until etcd has committed the records
        /// it shows (and the local file holds them): a failover loses no acknowledged change.
        case async, sync, none, replicated
    }

    // MARK: A cluster (docs/CLUSTER.md)

    /// etcd's client endpoints (HOST:PORT, comma-separated in a setting): set, this node is
    /// one replica of `shard` in cluster `clusterName`. Empty: a single node, as before.
    public var etcdEndpoints: [String] = []
    public var clusterName = "tollgate"
    public var shard = "s0"
    /// This node's name in its shard, unique there; empty: the host name.
    public var nodeName = ""
    /// The gate address routers and clients reach this node at (HOST:PORT); empty: the host
    /// and port it listens on.
    public var advertiseAddress = ""
    /// The leader's lease in etcd: a leader that stops renewing it (dead, paused, cut off)
    /// loses the shard this long after its last renewal.
    public var leaderLeaseSeconds: Int64 = 3
    /// How long one request to etcd may take before it is tried on another member.
    public var etcdTimeoutMilliseconds: Int64 = 1_000

    public var isClustered: Bool { !etcdEndpoints.isEmpty && !router }
    /// The hold and grant id space of this node's shard (`Ledger.useIDSpace(tag:)`): shards
    /// allocate ids apart, so a family moved between them keeps its ids. 0 for a single node.
    public var idSpaceTag: UInt16 { isClustered ? Ledger.idSpaceTag(forShard: shard) : 0 }

    /// Router mode: no ledger; each request goes to the leader of its account's shard
    /// (docs/CLUSTER.md, "The routing sidecar"). Needs `etcdEndpoints`.
    public var router = false
    /// How long a router keeps resending a request through a failover before it answers
    /// `unavailable`.
    public var routerRetrySeconds: Int64 = 15
    /// The credential a router presents to the shards' nodes; empty: its own admin token.
    public var upstreamToken = ""
    /// TLS to the cluster's nodes (a router's requests and relayed events, a new node copying
    /// another's files), for nodes whose gate speaks TLS: the CAs their certificates chain to
    /// (nil: the system's), and for mTLS this side's certificate and key. Off unless one is set.
    public var upstreamCAFile: String?
    public var upstreamCertificateFile: String?
    public var upstreamKeyFile: String?

    // MARK: Transport security and access

    /// The gate port speaks TLS when both are set (PEM files, re-read when they change).
    public var tlsCertificateFile: String?
    public var tlsKeyFile: String?
    /// PEM bundle of the CAs client certificates must chain to: mTLS.
    public var tlsClientCAFile: String?
    /// Whether a client certificate is `required` (the default with a client CA), `optional`
    /// or not asked for (`none`, the default without one).
    public var tlsClientCertificates: TLSSettings.ClientCertificates?
    /// TLS 1.3 unless 1.2 is allowed here.
    public var tlsMinimumVersion = TLSSettings.MinimumVersion.tls13
    /// Identities, roles and scopes (see `Credentials.parse`). Without one, the server writes
    /// an admin token to `<dataDirectory>/admin.token` (mode 0600) and accepts only that.
    public var credentialsFile: String?
    /// Credentials given directly (tests, embedding); they take the place of the file.
    public var credentials: Credentials?
    /// Plaintext on an address other than loopback is refused unless this is set: tokens
    /// would cross the network in the clear.
    public var allowPlaintext = false
    /// How often the TLS files and the credentials file are checked for changes (0: only on
    /// SIGHUP).
    public var reloadCheckSeconds: Int64 = 5
    /// A connection must complete its TLS handshake and HELLO within this time.
    public var handshakeTimeoutMilliseconds: Int64 = 10_000

    /// Shifts the server's clock by this many seconds: for demos and tests that need a
    /// period to turn or a day to pass (examples/walkthrough.sh). The ledger never goes back
    /// in time, so a smaller offset after a larger one changes nothing until time catches up.
    public var clockOffsetSeconds: Int64 = 0

    /// Where events (alerts, recharges) are POSTed as JSON, at least once, in order; none
    /// when unset. `http://` or `https://`.
    public var webhookURL: String?
    public var webhookTimeoutMilliseconds: Int64 = 5_000

    // MARK: The read API and the dashboard

    /// Consumption and refusal entries kept in memory (ledger-wide) for the read API's recent
    /// consumption and refusals by reason; 0 keeps none.
    public var recentActivityKept = 10_000
    /// Accounts whose balance over time is sampled (every second, for an hour) at once: those
    /// read through the read API or the dashboard in the last 15 minutes.
    public var dashboardAccountsMax = 64

    /// How often start-up reports its progress (checkpoint loading, journal replay) in the log
    /// and in `/readyz`. Not a setting: tests shorten it.
    public var progressIntervalMilliseconds: Int64 = 1_000

    /// The TLS settings, when TLS is configured.
    public var tls: TLSSettings? {
        guard let tlsCertificateFile, let tlsKeyFile else { return nil }
        return TLSSettings(
            certificateFile: tlsCertificateFile, keyFile: tlsKeyFile, clientCAFile: tlsClientCAFile, clientCertificates: tlsClientCertificates,
            minimumVersion: tlsMinimumVersion)
    }

    public init() {}
}
