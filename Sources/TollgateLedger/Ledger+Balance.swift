/// A read of one account, or one member of it: what each level of the chain has consumed and
/// holds this period, its cap and headroom, the funds behind it and the grants they come from.
public struct Balance: Hashable, Sendable {
    public var account: String
    public var member: String?
    /// The instant the balance is as of.
    public var at: Instant
    public var periodStart: Instant
    public var periodEnd: Instant
    public var headroom: Headroom
    /// Member, each group, account and parent, in that order; only the levels that apply.
    public var levels: [LevelUsage]
    public var funds: Funds
    /// The grants this account (or member) can draw on now, in draw order.
    public var grants: [GrantView]
    public var openHolds: Int
    /// The most holds that may be open at once: the member's bound (its own or the account's
    /// for each member) for a member's balance, else the account's; nil when unbounded.
    public var openHoldsLimit: Int?
    /// The account's seat subscription, if one is running.
    public var subscription: SubscriptionView?
    /// Consumption over the last minute and hour: the member's when the balance is a
    /// member's, else the account's.
    public var burn: BurnRate

    public init(
        account: String, member: String?, at: Instant, periodStart: Instant, periodEnd: Instant, headroom: Headroom,
        levels: [LevelUsage], funds: Funds, grants: [GrantView], openHolds: Int, subscription: SubscriptionView? = nil,
        burn: BurnRate = BurnRate(lastMinute: 0, lastHour: 0)
    ) {
        self.subscription = subscription
        self.burn = burn
        self.account = account
        self.member = member
        self.at = at
        self.periodStart = periodStart
        self.periodEnd = periodEnd
        self.headroom = headroom
        self.levels = levels
        self.funds = funds
        self.grants = grants
        self.openHolds = openHolds
    }
}

public struct LevelUsage: Hashable, Sendable {
    public var level: LedgerError.Level
    public var subject: String
    public var limit: Credits?
    public var consumed: Credits
    public var held: Credits
    /// What the tightest hard cap (of the period's and the windows') still allows.
    public var headroom: Credits?
    /// Every cap of the level: the period's hard cap (`limit`) first if set, then the caps over
    /// other windows and the soft caps (Ledger+Windows.swift).
    public var caps: [CapView]

    public init(level: LedgerError.Level, subject: String, limit: Credits?, consumed: Credits, held: Credits, headroom: Credits?, caps: [CapView] = []) {
        self.level = level
        self.subject = subject
        self.limit = limit
        self.consumed = consumed
        self.held = held
        self.headroom = headroom
        self.caps = caps
    }
}

public struct Funds: Hashable, Sendable {
    /// Available on grants scoped to the member.
    public var member: Credits
    /// Available in the account's pool.
    public var pool: Credits
    /// Available in the parent's pool.
    public var parentPool: Credits
    public var overage: OveragePolicy
    /// Consumed with no grant behind it, to be billed.
    public var overdrawn: Credits
    /// Held beyond the grants under an overdraft policy.
    public var overdraftHeld: Credits

    public init(member: Credits, pool: Credits, parentPool: Credits, overage: OveragePolicy, overdrawn: Credits, overdraftHeld: Credits) {
        self.member = member
        self.pool = pool
        self.parentPool = parentPool
        self.overage = overage
        self.overdrawn = overdrawn
        self.overdraftHeld = overdraftHeld
    }

    /// What the grants hold minus what is owed: negative once the account is overdrawn.
    public var balance: Credits { member + pool + parentPool - overdrawn - overdraftHeld }
}

public struct GrantView: Hashable, Sendable {
    public enum State: UInt8, Hashable, Sendable, CaseIterable {
        case pending, active, expired, voided
    }

    public var id: GrantID
    public var account: String
    public var scope: GrantScope
    public var amount: Credits
    public var available: Credits
    public var held: Credits
    public var consumed: Credits
    public var expired: Credits
    public var voided: Credits
    public var priority: Int32
    public var effectiveAt: Instant
    public var expiresAt: Instant
    public var source: GrantSource
    public var state: State
    /// The products it may pay for; empty: any.
    public var products: [String]

    public init(
        id: GrantID, account: String, scope: GrantScope, amount: Credits, available: Credits, held: Credits,
        consumed: Credits, expired: Credits, voided: Credits, priority: Int32, effectiveAt: Instant, expiresAt: Instant,
        source: GrantSource, state: State, products: [String] = []
    ) {
        self.products = products
        self.id = id
        self.account = account
        self.scope = scope
        self.amount = amount
        self.available = available
        self.held = held
        self.consumed = consumed
        self.expired = expired
        self.voided = voided
        self.priority = priority
        self.effectiveAt = effectiveAt
        self.expiresAt = expiresAt
        self.source = source
        self.state = state
    }
}

extension Ledger {
    /// The balance of an account, or of one member of it, at `instant`.
    public mutating func balance(account: String, member: String? = nil, at instant: Instant) -> Result<Balance, LedgerError> {
        let now = advance(to: instant)
        let chain: Chain
        switch resolveChain(account: account, member: member) {
        case .failure(let error): return .failure(error)
        case .success(let value): chain = value
        }
        let accountIndex = Int(chain.account)
        let record = accounts[accountIndex]
        let window = record.period.window(containing: now)
        var levels: [LevelUsage] = []
        var ownSlots = record.poolOrder
        var memberAvailable: Credits = 0
        var openHolds = record.openHolds
        var openHoldsLimit = record.holdLimit
        if chain.member != noSlot {
            let memberRecord = members[Int(chain.member)]
            levels.append(usage(.member, memberRecord.id, memberRecord.capLimit, memberRecord.usage, memberRecord.windows, record.period, now))
            for group in memberRecord.groups {
                let groupRecord = groups[Int(group)]
                levels.append(usage(.group, groupRecord.id, groupRecord.capLimit, groupRecord.usage, groupRecord.windows, record.period, now))
            }
            memberAvailable = memberRecord.available
            openHolds = memberRecord.openHolds
            openHoldsLimit = memberRecord.holdLimit ?? record.memberHoldLimit
            // The member's grants and the pool interleave in one draw order.
            ownSlots = (memberRecord.grantOrder + record.poolOrder).sorted { grants[Int($0)].drawsBefore(grants[Int($1)]) }
        }
        levels.append(usage(.account, record.id, record.capLimit, record.usage, record.windows, record.period, now))
        var parentSlots: [Int32] = []
        var parentPool: Credits = 0
        if chain.parent != noSlot {
            let parent = accounts[Int(chain.parent)]
            levels.append(usage(.parent, parent.id, parent.capLimit, parent.usage, parent.windows, parent.period, now))
            parentPool = parent.poolAvailable
            parentSlots = parent.poolOrder
        }
        var balance = Balance(
                account: record.id, member: member, at: now, periodStart: window.start, periodEnd: window.end,
                headroom: headroom(chain, at: now), levels: levels,
                funds: Funds(
                    member: memberAvailable, pool: record.poolAvailable, parentPool: parentPool, overage: record.overage,
                    overdrawn: record.overdrawn, overdraftHeld: record.overdraftHeld),
                grants: (ownSlots + parentSlots).map(view), openHolds: openHolds, subscription: subscriptionView(chain.account),
                burn: burnRate(chain, at: now))
        balance.openHoldsLimit = openHoldsLimit
        return .success(balance)
    }

    /// Every live grant of an account, including those not yet effective and those that are
    /// spent or expired but still have credits held on them.
    func burnRate(_ chain: Chain, at now: Instant) -> BurnRate {
        let totals = burnWindow(chain).totals(at: now)
        return BurnRate(lastMinute: totals.minute, lastHour: totals.hour)
    }

    /// The member's burn window when the chain names a member, else the account's; empty for
    /// those that never consumed.
    func burnWindow(_ chain: Chain) -> BurnWindow {
        let member = Int(chain.member)
        let account = Int(chain.account)
        let window = chain.member != noSlot ? (member < memberBurn.count ? memberBurn[member] : nil) : (account < accountBurn.count ? accountBurn[account] : nil)
        return window ?? BurnWindow()
    }

    /// Credits consumed across the whole ledger over the last minute and hour.
    public func totalBurn(at now: Instant) -> BurnRate {
        let totals = ledgerBurn.totals(at: now)
        return BurnRate(lastMinute: totals.minute, lastHour: totals.hour)
    }

    public func grants(of account: String) -> [GrantView] {
        guard let slot = accountSlots[HashedString(account)] else { return [] }
        return grants.indices
            .filter { grants[$0].isLive && grants[$0].account == slot }
            .sorted { grants[$0].id < grants[$1].id }
            .map { view(Int32($0)) }
    }

    /// The hold with this id, if it is open.
    public func hold(_ id: HoldID) -> HoldView? {
        guard let hold = holds[HoldKey(id)] else { return nil }
        return HoldView(
            id: hold.id, account: accounts[Int(hold.account)].id,
            member: hold.member == noSlot ? nil : members[Int(hold.member)].id, product: hold.product,
            quantity: hold.quantity, creditsPerUnit: hold.creditsPerUnit, original: hold.original, held: hold.held,
            committed: hold.committed, createdAt: hold.createdAt, deadline: hold.deadline)
    }

    /// What a group of the account has consumed this period and holds at `now`: what was
    /// decided for its members while they were in it. Nil for an unknown account or group.
    public func groupUsage(account: String, group: String, at now: Instant) -> LevelUsage? {
        guard case .success(let slots) = groupSlot(account, group) else { return nil }
        let record = groups[Int(slots.group)]
        return usage(.group, record.id, record.capLimit, record.usage, record.windows, accounts[Int(slots.account)].period, max(now, clock))
    }

    public var openHoldCount: Int { holds.count }
    public var accountCount: Int { accounts.count }
    public var memberCount: Int { liveMemberCount }
    public var idempotencyKeyCount: Int { idempotency.count }

    private func usage(
        _ level: LedgerError.Level, _ subject: String, _ limit: Credits?, _ counter: UsageCounter, _ windows: [WindowCap], _ period: BillingPeriod,
        _ now: Instant
    ) -> LevelUsage {
        LevelUsage(
            level: level, subject: subject, limit: limit, consumed: counter.consumed(at: now), held: counter.held,
            headroom: Self.tightest(windows, counter.headroom(limit: limit, at: now), at: now),
            caps: capViews(capLimit: limit, usage: counter, windows: windows, period: period, at: now))
    }

    func view(_ slot: Int32) -> GrantView {
        let grant = grants[Int(slot)]
        let state: GrantView.State =
            switch grant.state {
            case .pending: .pending
            case .active: .active
            case .expired: .expired
            case .voided: .voided
            }
        return GrantView(
            id: grant.id, account: accounts[Int(grant.account)].id, scope: grant.memberID.map { .member($0) } ?? .pool,
            amount: grant.amount, available: grant.available, held: grant.held, consumed: grant.consumed,
            expired: grant.expired, voided: grant.voided, priority: grant.priority, effectiveAt: grant.effectiveAt,
            expiresAt: grant.expiresAt, source: grant.source, state: state, products: grant.isScoped ? products(ofGrant: grant.id) : [])
    }
}

public struct HoldView: Hashable, Sendable {
    public var id: HoldID
    public var account: String
    public var member: String?
    public var product: String
    public var quantity: Int64
    public var creditsPerUnit: Credits
    public var original: Credits
    public var held: Credits
    public var committed: Credits
    public var createdAt: Instant
    public var deadline: Instant
}

/// Ledger-wide sums over every grant ever made, and over every account's overdraft. For every
/// grant `amount = available + held + consumed + expired + voided`, so the same holds for the
/// sums; `consumed + overdrawn` is everything ever committed or spent.
public struct CreditTotals: Hashable, Sendable {
    public var granted: Credits = 0
    public var available: Credits = 0
    public var held: Credits = 0
    public var consumed: Credits = 0
    public var expired: Credits = 0
    public var voided: Credits = 0
    public var overdrawn: Credits = 0
    public var overdraftHeld: Credits = 0

    public init() {}

    /// Lifetime totals only grow (every grant ever made is in `granted`), so they are kept
    /// modulo 2^64 — wrapping, never trapping, after about 9.2 million grants of `creditsMax`
    /// — and the identities between them hold in the same arithmetic.
    mutating func add(_ grant: GrantRecord) {
        granted &+= grant.amount
        available &+= grant.available
        held &+= grant.held
        consumed &+= grant.consumed
        expired &+= grant.expired
        voided &+= grant.voided
    }
}

extension Ledger {
    /// Sums over all grants and accounts; O(grants + accounts), for tests and diagnostics.
    public func creditTotals() -> CreditTotals {
        var totals = retiredTotals
        for grant in grants where grant.isLive { totals.add(grant) }
        for account in accounts {
            totals.overdrawn &+= account.overdrawn
            totals.overdraftHeld &+= account.overdraftHeld
        }
        return totals
    }
}
