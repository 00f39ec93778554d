import TollgateLedger

/// Ready-made ledgers: the hybrid-plan example from the project's seeds, and a large ledger
/// for benchmarks.
public enum Fixtures {
    /// 2026-01-01T00:00:00Z.
    public static let start = CivilTime(year: 2026, month: 1, day: 1).instant
    public static let hour = Microseconds.perHour
    public static let day = Microseconds.perDay
    public static let year = 365 * Microseconds.perDay

    public static let assistant = "ai.assistant"
    public static let preview = "ai.preview"
    public static let summary = "ai.summary"

    /// The Team plan from the seeds: account `acme` with four seats (`ana`, `ben`, `cy`,
    /// `dee`) and 4 × 100 = 400 pooled credits for the month; AI Assistant 12 credits, AI
    /// Preview 5, AI Summary 7; and a 1,000-credit top-up at priority 100 that expires in a
    /// year, so it is drawn only after the included credits. Returns the ids of both grants.
    @discardableResult
    public static func seedsExample(_ driver: inout LedgerDriver, topUp: Bool = true) -> (included: GrantID, topUp: GrantID?) {
        let now = driver.now
        driver.setUp(.setRate(product: assistant, creditsPerUnit: 12, effectiveAt: now))
        driver.setUp(.setRate(product: preview, creditsPerUnit: 5, effectiveAt: now))
        driver.setUp(.setRate(product: summary, creditsPerUnit: 7, effectiveAt: now))
        driver.setUp(.createAccount(CreateAccount(account: "acme")))
        for seat in ["ana", "ben", "cy", "dee"] {
            driver.setUp(.addMember(account: "acme", member: seat))
        }
        let periodEnd = BillingPeriod.monthly(anchor: now).window(containing: now).end
        guard
            case .grantAdded(let included) = driver.run(
                .addGrant(
                    AddGrant(
                        account: "acme", amount: 4 * 100, priority: 0, effectiveAt: now, expiresAt: periodEnd,
                        source: .recurring)))
        else { preconditionFailure("included grant refused") }
        guard topUp else { return (included, nil) }
        guard
            case .grantAdded(let topUpID) = driver.run(
                .addGrant(
                    AddGrant(
                        account: "acme", amount: 1_000, priority: 100, effectiveAt: now,
                        expiresAt: now.adding(microseconds: year), source: .topUp)))
        else { preconditionFailure("top-up grant refused") }
        return (included, topUpID)
    }

    /// `accounts` accounts named `a0`, `a1`, … each with `membersPerAccount` members `m0`, …
    /// and one pooled grant of `creditsPerAccount`; one product `p` at 1 credit per unit.
    /// Built directly on a ledger (keys `setup-N`), for benchmarks.
    public static func large(
        accounts: Int, membersPerAccount: Int, creditsPerAccount: Credits = 1_000_000_000_000, limits: LedgerLimits = LedgerLimits()
    ) -> Ledger {
        var ledger = Ledger(limits: limits, startingAt: start)
        ledger.reserveCapacity(accounts: accounts, members: accounts * membersPerAccount, holds: 1_024, idempotencyKeys: 0)
        var key = 0
        var now = start
        func run(_ command: Command) {
            key += 1
            // Move past the keys' retention now and then, so set-up never fills the table.
            if key % (limits.idempotencyKeysMax / 2) == 0 { now = now.adding(microseconds: limits.idempotencyRetentionMicroseconds) }
            let answer = ledger.apply(command, key: "setup-\(key)", at: now)
            precondition(!answer.isRefused, "set-up command \(command) was refused: \(answer)")
        }
        run(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: start))
        for account in 0..<accounts {
            let id = "a\(account)"
            run(.createAccount(CreateAccount(account: id)))
            for member in 0..<membersPerAccount {
                run(.addMember(account: id, member: "m\(member)"))
            }
            run(.addGrant(AddGrant(account: id, amount: creditsPerAccount, effectiveAt: start)))
        }
        // The set-up keys are not part of what is measured.
        ledger.advance(to: now.adding(microseconds: limits.idempotencyRetentionMicroseconds))
        return ledger
    }
}
