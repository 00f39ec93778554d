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
    /// Where decisions run. `.connectionThread` (the default, chosen by measurement: see
    /// bench/README.md) decides under a mutex on the event-loop thread that read the request;
    /// `.dedicatedThread` hands every decision to one ledger thread and the answer back.
    public var decisionThread = DecisionThread.connectionThread

    public enum DecisionThread: String, Sendable, Equatable {
        case connectionThread = "connection"
        case dedicatedThread = "dedicated"
    }
    public var limits = LedgerLimits()
    /// `async` (the default): answers leave at once and the journal is fsynced every
    /// `journalFlushIntervalMilliseconds`, the window a crash can lose. `sync`: every answer to
    /// a mutation waits for the fsync that keeps it. `none`: nothing is kept (tests, benchmarks).
    public var journalMode = JournalModeSetting.async
    public var journalFlushIntervalMilliseconds: Int64 = 10
    public var journalSegmentBytes = 64 << 20
    /// How often a full checkpoint is written in the background (0: never), so recovery
    /// replays only the journal after it.
    public var checkpointIntervalSeconds: Int64 = 300
    /// Segments wholly inside the newest checkpoint are deleted once older than this.
    public var journalRetentionHours: Int64 = 168

    public enum JournalModeSetting: String, Sendable, Equatable {
        case async, sync, none
    }

    public init() {}
}
