/// Plans: named templates of a subscription, an overage policy, grants (a prepaid bucket,
/// top-ups), alerts and an auto-recharge, that provision an account in one command.

public struct PlanGrant: Hashable, Sendable {
    public var amount: Credits
    public var priority: Int32
    public var source: GrantSource
    /// How long the grant lasts from provisioning; nil never expires.
    public var lifetimeMicroseconds: Int64?

    public init(amount: Credits, priority: Int32 = 0, source: GrantSource = .topUp, lifetimeMicroseconds: Int64? = nil) {
        self.amount = amount
        self.priority = priority
        self.source = source
        self.lifetimeMicroseconds = lifetimeMicroseconds
    }
}

public struct Plan: Hashable, Sendable {
    public var name: String
    public var overage: OveragePolicy
    public var subscription: Subscription?
    public var grants: [PlanGrant]
    public var alerts: [AlertRule]
    public var autoRecharge: AutoRecharge?

    public init(
        name: String, overage: OveragePolicy = .deny, subscription: Subscription? = nil, grants: [PlanGrant] = [], alerts: [AlertRule] = [],
        autoRecharge: AutoRecharge? = nil
    ) {
        self.name = name
        self.overage = overage
        self.subscription = subscription
        self.grants = grants
        self.alerts = alerts
        self.autoRecharge = autoRecharge
    }
}

/// Creates `account` on `plan`: the account, its members, its seats and subscription, the
/// plan's grants, alerts and auto-recharge — all or nothing.
public struct Provision: Hashable, Sendable {
    public var account: String
    public var plan: String
    public var parent: String?
    /// A pooled subscription's seat count (ignored per member: the members are the seats).
    public var seats: Int64
    public var members: [String]

    public init(account: String, plan: String, parent: String? = nil, seats: Int64 = 0, members: [String] = []) {
        self.account = account
        self.plan = plan
        self.parent = parent
        self.seats = seats
        self.members = members
    }
}

extension Ledger {
    mutating func definePlan(_ plan: Plan, at now: Instant) -> Answer {
        if let error = validateIdentifier(plan.name, "plan") { return refused(error) }
        guard plans[plan.name] != nil || plans.count < limits.plansMax else {
            return refused(LedgerError(.limitReached, level: .ledger, subject: "plans"))
        }
        if let error = problem(plan: plan) { return refused(error) }
        plans[plan.name] = plan
        return .done
    }

    /// What is wrong with a plan's own contents, or nil: checked when it is defined and again
    /// when it provisions (a plan stored before a check was added may not pass it), so no step
    /// of provisioning meets a refusal after the first change.
    func problem(plan: Plan) -> LedgerError? {
        if let error = validate(plan.overage) { return error }
        guard plan.grants.count <= 16, plan.alerts.count <= limits.alertsPerAccountMax else {
            return LedgerError(.limitReached, level: .request, subject: "a plan carries at most 16 grants and \(limits.alertsPerAccountMax) alerts")
        }
        if let terms = plan.subscription, let error = problem(subscription: terms, seats: 0, account: nil) { return error }
        for grant in plan.grants {
            if let error = validateCredits(grant.amount, "grant amount") { return error }
            if let lifetime = grant.lifetimeMicroseconds, lifetime <= 0 {
                return LedgerError(.invalidArgument, level: .request, subject: "a grant's lifetime must be positive")
            }
        }
        for alert in plan.alerts {
            if let error = problem(alert: alert) { return error }
            if alert.member != nil {
                return LedgerError(.invalidArgument, level: .request, subject: "a plan's alerts watch the account, not a member")
            }
        }
        if let recharge = plan.autoRecharge, let error = problem(recharge: recharge) { return error }
        return nil
    }

    mutating func provision(_ provision: Provision, at now: Instant) -> Answer {
        guard let plan = plans[provision.plan] else {
            return refused(LedgerError(.invalidArgument, level: .request, subject: "no plan \(provision.plan)"))
        }
        if let error = problem(plan: plan) { return refused(error) }
        // Everything that could refuse is checked before anything changes.
        if let error = validateIdentifier(provision.account, "account") { return refused(error) }
        guard accountSlots[HashedString(provision.account)] == nil else {
            return refused(LedgerError(.alreadyExists, level: .account, subject: provision.account))
        }
        guard accounts.count < limits.accountsMax else { return refused(LedgerError(.limitReached, level: .ledger, subject: "accounts")) }
        if let parent = provision.parent {
            guard let slot = accountSlots[HashedString(parent)] else { return refused(LedgerError(.unknownAccount, level: .parent, subject: parent)) }
            guard accounts[Int(slot)].parent == noSlot else {
                return refused(LedgerError(.invalidArgument, level: .parent, subject: "a parent account cannot itself have a parent"))
            }
        }
        guard Set(provision.members).count == provision.members.count else {
            return refused(LedgerError(.invalidArgument, level: .request, subject: "a member is listed twice"))
        }
        for member in provision.members {
            if let error = validateIdentifier(member, "member") { return refused(error) }
        }
        let memberLimit = plan.subscription?.scope == .perMember ? min(limits.membersPerAccountMax, limits.seatMembersPerAccountMax) : limits.membersPerAccountMax
        guard provision.members.count <= memberLimit, liveMemberCount + provision.members.count <= limits.membersMax else {
            return refused(LedgerError(.limitReached, level: .account, subject: "members per account"))
        }
        guard provision.seats >= 0, provision.seats <= limits.seatsPerAccountMax else {
            return refused(LedgerError(.amountOutOfRange, level: .request, subject: "seats must be 0 to \(limits.seatsPerAccountMax)"))
        }
        if let terms = plan.subscription, let error = problem(subscription: terms, seats: provision.seats, account: nil) { return refused(error) }

        // The checks above are the steps' own, so no step refuses. Were one to, its refusal is
        // the answer (the steps before it stay, on replay as live) rather than a trap.
        var failure: Answer?
        func must(_ answer: Answer) {
            if failure == nil, answer.isRefused { failure = answer }
        }
        must(createAccount(CreateAccount(account: provision.account, parent: provision.parent, overage: plan.overage), at: now))
        for member in provision.members { must(addMember(provision.account, member: member, at: now)) }
        if let terms = plan.subscription {
            if terms.scope == .pooled { must(setSeats(provision.account, seats: provision.seats, effectiveAt: now, at: now)) }
            must(setSubscription(provision.account, terms: terms, at: now))
        }
        guard let slot = accountSlots[HashedString(provision.account)] else { return failure ?? .done }
        for grant in plan.grants {
            let expiresAt = grant.lifetimeMicroseconds.map { now.adding(microseconds: $0) } ?? .distantFuture
            _ = createGrant(
                account: slot, member: noSlot, amount: grant.amount, priority: grant.priority, effectiveAt: now, expiresAt: expiresAt, source: grant.source,
                at: now)
        }
        for alert in plan.alerts { must(setAlert(provision.account, rule: alert, at: now)) }
        if let recharge = plan.autoRecharge { must(setAutoRecharge(provision.account, rule: recharge, at: now)) }
        return failure ?? .done
    }

    /// The plans defined, by name.
    public var definedPlans: [Plan] { plans.values.sorted { $0.name < $1.name } }
}
