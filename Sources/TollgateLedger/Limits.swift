/// Every collection and every number the ledger accepts has a ceiling. Hitting one is a
/// `LedgerError` with code `.limitReached` (or `.amountOutOfRange`) naming the limit, never a
/// crash and never silent truncation.
public struct LedgerLimits: Hashable, Sendable {
    public var accountsMax = 1_000_000
    public var membersMax = 10_000_000
    public var membersPerAccountMax = 100_000
    public var groupsPerAccountMax = 1_000
    public var groupsPerMemberMax = 16
    /// Grants that still hold or can hand out credits. Spent, expired and voided grants stop
    /// counting once nothing is held on them.
    public var grantsPerAccountMax = 10_000
    /// A pooled subscription's seat count.
    public var seatsPerAccountMax: Int64 = 1_000_000
    /// Members of an account with a per-member subscription: each holds its own included
    /// grants (and a rollover), which count against `grantsPerAccountMax`.
    public var seatMembersPerAccountMax = 2_000
    /// Balance alerts per account (its own and its members').
    public var alertsPerAccountMax = 16
    public var plansMax = 1_000
    public var holdsPerAccountMax = 10_000
    public var holdsMax = 2_000_000
    public var productsMax = 10_000
    /// Products a product-scoped grant may list.
    public var productsPerGrantMax = 16
    public var rateVersionsPerProductMax = 1_000
    public var rateOverridesPerAccountMax = 1_000
    /// Account, member, group and product identifiers: 1 to this many bytes of printable
    /// ASCII without spaces.
    public var identifierBytesMax = 64
    public var idempotencyKeyBytesMax = 128
    public var quantityMax: Int64 = 1_000_000_000_000
    /// The largest single amount: a grant, a cost, a cap, a rate, an overdraft limit. With
    /// `grantsPerAccountMax` and `holdsMax` it keeps every balance and every held total far
    /// below `Int64.max`; the counters that only grow (consumption in a period, what an
    /// account has overdrawn) saturate instead of overflowing.
    public var creditsMax: Credits = 1_000_000_000_000
    public var holdTTLMicrosecondsMax: Int64 = 7 * Microseconds.perDay
    public var finishPercentMax: Int64 = 1_000
    /// How long an idempotency key is remembered, and how many the in-memory table holds.
    /// A key is remembered from its decision until the retention has passed. When the table
    /// is full its oldest key goes to the server's disk tier (`Ledger.archivesEvictedKeys`),
    /// or, for a ledger with no disk tier, is forgotten early (`idempotencyKeysForgottenEarly`).
    /// Nothing is ever refused because the table is full. About 200 bytes a key in memory
    /// (bench/README.md), so the default table holds about 50 MiB.
    public var idempotencyRetentionMicroseconds: Int64 = 24 * Microseconds.perHour
    public var idempotencyKeysMax = 250_000
    /// How many resolved holds are remembered so that a late commit gets "committed",
    /// "released" or "expired" instead of "unknown hold". Oldest are forgotten first.
    public var resolvedHoldsRemembered = 1_000_000
    public var resolvedHoldsRetentionMicroseconds: Int64 = 24 * Microseconds.perHour

    public init() {}
}
