import TollgateLedger
import TollgateLedgerTestSupport

extension Answer {
    var decision: Decision? {
        if case .decision(let decision) = self { return decision }
        return nil
    }

    var committed: CommitResult? {
        if case .committed(let result) = self { return result }
        return nil
    }

    var released: ReleaseResult? {
        if case .released(let result) = self { return result }
        return nil
    }

    var grantID: GrantID? {
        if case .grantAdded(let id) = self { return id }
        return nil
    }

    var errorCode: LedgerError.Code? { refusal?.error.code }
}

let second = Microseconds.perSecond
let minute = Microseconds.perMinute

/// A ledger with product `p` at 1 credit a unit, product `q` at 3, and account `acct` with
/// members `m1`, `m2`, `m3` and no grants.
func makeDriver(overage: OveragePolicy = .deny, limits: LedgerLimits = LedgerLimits()) -> LedgerDriver {
    var driver = LedgerDriver(limits: limits)
    driver.setUp(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: driver.now))
    driver.setUp(.setRate(product: "q", creditsPerUnit: 3, effectiveAt: driver.now))
    driver.setUp(.createAccount(CreateAccount(account: "acct", overage: overage)))
    for member in ["m1", "m2", "m3"] {
        driver.setUp(.addMember(account: "acct", member: member))
    }
    return driver
}

extension LedgerDriver {
    @discardableResult
    mutating func grant(
        _ amount: Credits, account: String = "acct", scope: GrantScope = .pool, priority: Int32 = 0,
        effectiveIn: Int64 = 0, expiresIn: Int64? = nil
    ) -> GrantID {
        let answer = run(
            .addGrant(
                AddGrant(
                    account: account, scope: scope, amount: amount, priority: priority,
                    effectiveAt: now.adding(microseconds: effectiveIn),
                    expiresAt: expiresIn.map { now.adding(microseconds: $0) } ?? .distantFuture)))
        guard let id = answer.grantID else { preconditionFailure("grant refused: \(answer)") }
        return id
    }

    mutating func reserve(
        _ quantity: Int64, member: String? = "m1", account: String = "acct", product: String = "p", ttl: Int64 = 60 * Microseconds.perSecond,
        key: String? = nil
    ) -> Answer {
        run(
            .reserve(Reserve(DecisionRequest(account: account, member: member, product: product, quantity: quantity), ttlMicroseconds: ttl)),
            key: key)
    }

    mutating func spend(_ quantity: Int64, member: String? = "m1", account: String = "acct", product: String = "p", key: String? = nil) -> Answer {
        run(.spend(Spend(DecisionRequest(account: account, member: member, product: product, quantity: quantity))), key: key)
    }

    mutating func commit(_ hold: HoldID, _ amount: Commit.Amount = .held, final: Bool = true, account: String = "acct", key: String? = nil) -> Answer {
        run(.commit(Commit(HoldReference(account: account, hold: hold), amount: amount, isFinal: final)), key: key)
    }

    mutating func release(_ hold: HoldID, account: String = "acct") -> Answer {
        run(.release(HoldReference(account: account, hold: hold)))
    }

    /// Grant views of the account's live grants by id.
    func grantView(_ id: GrantID, account: String = "acct") -> GrantView? {
        ledger.grants(of: account).first { $0.id == id }
    }

    var violations: [String] { ledger.invariantViolations() }
}
