import TollgateLedger

/// The benchmarks' workload: one ledger of (by default) 100,000 accounts × 10 members
/// (1,000,000 members), mutated in place across iterations. Each operation advances the ledger's
/// clock by one microsecond, so idempotency keys, resolved holds and hold deadlines (retention
/// and TTL of 50 ms of ledger time) are forgotten at the rate they are made: the tables reach a
/// steady size during warm-up and the measured operations find them full, as a long-running
/// server would.
public final class LedgerWorkload: @unchecked Sendable {
    static let retentionMicroseconds: Int64 = 50_000
    static let keyCount = 1 << 20

    public let accountCount: Int
    public let membersPerAccount: Int
    public var ledger: Ledger
    public var now: Instant
    var operation = 0
    let accounts: [String]
    let members: [String]
    let keys: [String]

    public init(accounts accountCount: Int = 100_000, membersPerAccount: Int = 10) {
        self.accountCount = accountCount
        self.membersPerAccount = membersPerAccount
        var limits = LedgerLimits()
        limits.idempotencyRetentionMicroseconds = Self.retentionMicroseconds
        limits.resolvedHoldsRetentionMicroseconds = Self.retentionMicroseconds
        ledger = Fixtures.large(accounts: accountCount, membersPerAccount: membersPerAccount, limits: limits)
        now = ledger.clock
        accounts = (0..<accountCount).map { "a\($0)" }
        members = (0..<membersPerAccount).map { "m\($0)" }
        keys = (0..<Self.keyCount).map { "op-\($0)" }
        precondition(ledger.memberCount == accountCount * membersPerAccount)
    }

    /// The next request: accounts in a stride that defeats the cache, members round robin.
    @inline(__always)
    func nextRequest() -> DecisionRequest {
        operation &+= 1
        let account = accounts[(operation &* 7_919) % accountCount]
        return DecisionRequest(account: account, member: members[operation % membersPerAccount], product: "p", quantity: 1)
    }

    @inline(__always)
    func nextKey() -> String {
        now = now.adding(microseconds: 1)
        return keys[operation & (Self.keyCount - 1)]
    }

    public func reserveAndCommit() {
        let request = nextRequest()
        let reserved = ledger.apply(.reserve(Reserve(request, ttlMicroseconds: Self.retentionMicroseconds)), key: nextKey(), at: now)
        guard case .decision(let decision) = reserved, let hold = decision.hold else { preconditionFailure("reserve refused: \(reserved)") }
        operation &+= 1
        let committed = ledger.apply(.commit(Commit(HoldReference(account: request.account, hold: hold))), key: nextKey(), at: now)
        guard case .committed = committed else { preconditionFailure("commit refused: \(committed)") }
    }

    public func spend() {
        let request = nextRequest()
        let answer = ledger.apply(.spend(Spend(request)), key: nextKey(), at: now)
        guard case .decision = answer else { preconditionFailure("spend refused: \(answer)") }
    }

    public func check() {
        let request = nextRequest()
        now = now.adding(microseconds: 1)
        let answer = ledger.check(request, at: now)
        guard case .decision = answer else { preconditionFailure("check refused: \(answer)") }
    }
}
