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
    public var holdsPerAccountMax = 10_000
    public var holdsMax = 2_000_000
    public var productsMax = 10_000
    public var rateVersionsPerProductMax = 1_000
    public var rateOverridesPerAccountMax = 1_000
    /// Account, member, group and product identifiers: 1 to this many bytes of printable
    /// ASCII without spaces.
    public var identifierBytesMax = 64
    public var idempotencyKeyBytesMax = 128
    public var quantityMax: Int64 = 1_000_000_000_000
    /// The largest single amount: a grant, a cost, a cap, a rate, an overdraft limit.
    /// With `grantsPerAccountMax` it keeps every sum far from `Int64.max`.
    public var creditsMax: Credits = 100_000_000_000_000
    public var holdTTLMicrosecondsMax: Int64 = 7 * Microseconds.perDay
    public var finishPercentMax: Int64 = 1_000
    /// How long an idempotency key is remembered, and how many are remembered at once.
    /// When the table is full of live keys, new mutating requests are refused with
    /// `.limitReached` rather than forgetting a key early.
    public var idempotencyRetentionMicroseconds: Int64 = 24 * Microseconds.perHour
    public var idempotencyKeysMax = 2_000_000
    /// How many resolved holds are remembered so that a late commit gets "committed",
    /// "released" or "expired" instead of "unknown hold". Oldest are forgotten first.
    public var resolvedHoldsRemembered = 1_000_000
    public var resolvedHoldsRetentionMicroseconds: Int64 = 24 * Microseconds.perHour

    public init() {}
}
