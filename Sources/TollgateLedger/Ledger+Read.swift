/// Reads for operators and dashboards: an account at a glance, a page of accounts, and the
/// burn rate's buckets. Like `balance`, they advance the ledger's clock first, which changes
/// nothing a replay would not also do.

/// One account at a glance: what it holds, owes, holds back and burns.
public struct AccountSummary: Hashable, Sendable {
    public var account: String
    public var parent: String?
    public var children: Int
    public var members: Int
    /// Available in the account's pool.
    public var pool: Credits
    /// Available on its members' own grants.
    public var membersOwn: Credits
    /// Held by open holds at the account level (pool and members' grants alike).
    public var held: Credits
    /// Consumed this period at the account level, including its children's for a parent.
    public var consumed: Credits
    public var cap: Credits?
    public var overdrawn: Credits
    public var overdraftHeld: Credits
    public var overage: OveragePolicy
    /// The period's included credits (all seats'); 0 without a subscription.
    public var allotment: Credits
    public var openHolds: Int
    /// The most open holds the account may have, and each member (unless it has its own).
    public var openHoldsLimit: Int?
    public var memberOpenHoldsLimit: Int?
    /// The account's caps: the period's hard cap first if set, then window and soft caps.
    public var caps: [CapView] = []
    public var liveGrants: Int
    public var burn: BurnRate
    public var periodStart: Instant
    public var periodEnd: Instant
    public var at: Instant

    /// What the account holds (the pool and its members' own credits) less what it owes: the
    /// figure its alerts watch, negative once it is overdrawn.
    public var balance: Credits { pool + membersOwn - overdrawn - overdraftHeld }
}

/// Consumption in the burn window's buckets, oldest first: twelve 5-second buckets ending
/// with the current one, and twelve 5-minute buckets likewise.
public struct BurnBuckets: Hashable, Sendable {
    public struct Bucket: Hashable, Sendable {
        public var start: Instant
        public var credits: Credits
    }

    public var lastMinute: [Bucket]
    public var lastHour: [Bucket]
}

extension Ledger {
    /// The account at `instant`, or nil if there is no such account.
    public mutating func accountSummary(_ account: String, at instant: Instant) -> AccountSummary? {
        let now = advance(to: instant)
        guard let slot = accountSlots[HashedString(account)], movedOut.isEmpty || movedOut[slot] == nil else { return nil }
        return summary(slot, at: now)
    }

    /// Accounts in the order they were created, after the account `after` (from the start when
    /// nil), those `include` admits, at most `limit` of them; looks at `scanLimit` accounts at
    /// most. `next` is where the following page starts, nil at the end.
    public mutating func accountSummaries(
        after: String?, limit: Int, scanLimit: Int = 10_000, at instant: Instant, include: (String) -> Bool
    ) -> (page: [AccountSummary], next: String?)? {
        let now = advance(to: instant)
        var slot = 0
        if let after {
            guard let found = accountSlots[HashedString(after)] else { return nil }
            slot = Int(found) + 1
        }
        var page: [AccountSummary] = []
        var scanned = 0
        while slot < accounts.count && page.count < limit && scanned < scanLimit {
            // A family moved to another shard is listed there.
            if movedOut.isEmpty || movedOut[Int32(slot)] == nil, include(accounts[slot].id) { page.append(summary(Int32(slot), at: now)) }
            slot += 1
            scanned += 1
        }
        return (page, slot < accounts.count ? accounts[slot - 1].id : nil)
    }

    /// The burn rate's buckets for an account, or a member of it.
    public mutating func burnBuckets(account: String, member: String? = nil, at instant: Instant) -> Result<BurnBuckets, LedgerError> {
        let now = advance(to: instant)
        switch resolveChain(account: account, member: member) {
        case .failure(let error): return .failure(error)
        case .success(let chain):
            let window = burnWindow(chain)
            return .success(BurnBuckets(lastMinute: window.buckets(at: now, hour: false), lastHour: window.buckets(at: now, hour: true)))
        }
    }

    public func hasAccount(_ account: String) -> Bool {
        accountSlots[HashedString(account)] != nil
    }

    /// The account's parent, if it has one.
    public func parent(of account: String) -> String? {
        guard let slot = accountSlots[HashedString(account)] else { return nil }
        let parent = accounts[Int(slot)].parent
        return parent == noSlot ? nil : accounts[Int(parent)].id
    }

    /// The period's included credits of an account (all seats'), or of a member of a
    /// per-member subscription; 0 without a subscription.
    public func allotment(account: String, member: String? = nil) -> Credits {
        guard case .success(let chain) = resolveChain(account: account, member: member) else { return 0 }
        return allotment(chain.account, member: chain.member)
    }

    private func summary(_ slot: Int32, at now: Instant) -> AccountSummary {
        let record = accounts[Int(slot)]
        let window = record.period.window(containing: now)
        return AccountSummary(
            account: record.id, parent: record.parent == noSlot ? nil : accounts[Int(record.parent)].id, children: Int(record.childCount),
            members: record.memberCount, pool: record.poolAvailable, membersOwn: record.membersAvailable, held: record.usage.held,
            consumed: record.usage.consumed(at: now), cap: record.capLimit, overdrawn: record.overdrawn, overdraftHeld: record.overdraftHeld,
            overage: record.overage, allotment: allotment(slot, member: noSlot), openHolds: record.openHolds, openHoldsLimit: record.holdLimit,
            memberOpenHoldsLimit: record.memberHoldLimit,
            caps: capViews(capLimit: record.capLimit, usage: record.usage, windows: record.windows, period: record.period, at: now), liveGrants: record.liveGrants,
            burn: burnRate(Chain(account: slot, member: noSlot, parent: record.parent), at: now), periodStart: window.start, periodEnd: window.end, at: now)
    }
}

extension BurnWindow {
    /// The twelve buckets of the minute ring (or the hour ring) ending with the one holding
    /// `instant`, oldest first, with zero for buckets nothing was consumed in.
    func buckets(at instant: Instant, hour: Bool) -> [BurnBuckets.Bucket] {
        let length = hour ? Self.hourBucket : Self.minuteBucket
        let offset = hour ? 2 * Self.buckets : 0
        let cells = storage
        let current = instant.microsecondsSinceEpoch.flooredDivision(by: length)
        return (0..<Int64(Self.buckets)).map { back in
            let slice = current - Int64(Self.buckets) + 1 + back
            var credits: Credits = 0
            if !cells.isEmpty {
                let index = offset + Int(slice.flooredModulo(Int64(Self.buckets)))
                if cells[index] == slice { credits = cells[index + Self.buckets] }
            }
            return BurnBuckets.Bucket(start: Instant(microsecondsSinceEpoch: slice * length), credits: credits)
        }
    }
}

/// Credits one command consumed: a spend's cost, or what a commit turned from held into
/// consumed. The journal export and the server's recent activity both report it this way.
public struct Consumption: Hashable, Sendable {
    public var account: String
    public var member: String?
    public var product: String?
    public var credits: Credits
    /// The hold a commit resolved; nil for a spend.
    public var hold: HoldID?
}

extension Command {
    /// What this command consumed, given its answer; `hold` is the hold a commit names, looked
    /// up before the commit was applied (for its member and product). nil when nothing was.
    public func consumption(answer: Answer, hold: HoldView?) -> Consumption? {
        switch (self, answer) {
        case (.spend(let spend), .decision(let decision)):
            return Consumption(account: spend.request.account, member: spend.request.member, product: spend.request.product, credits: decision.cost)
        case (.commit(let commit), .committed(let result)) where result.committed > 0:
            return Consumption(account: commit.hold.account, member: hold?.member, product: hold?.product, credits: result.committed, hold: result.hold)
        case (.spendMetered(let request), .decision(let decision)):
            return Consumption(account: request.account, member: request.member, product: request.product, credits: decision.cost)
        case (.commitMetered(let reference, _, _), .committed(let result)) where result.committed > 0:
            return Consumption(account: reference.account, member: hold?.member, product: hold?.product, credits: result.committed, hold: result.hold)
        default:
            return nil
        }
    }
}

/// A member as `tollgate list members` shows it.
public struct MemberView: Hashable, Sendable {
    public var id: String
    public var cap: Credits?
    public var consumed: Credits
    public var held: Credits
    /// What its own grants have available.
    public var available: Credits
    public var openHolds: Int
    public var groups: [String]
    /// Its own bound on open holds, else the account's for each member.
    public var openHoldsLimit: Int?
    /// The period's hard cap first if set, then window and soft caps.
    public var caps: [CapView] = []
}

/// A product's rate card entry: the rate in force and the versions still to come.
public struct ProductView: Hashable, Sendable {
    public var product: String
    /// Nil when no version has taken effect yet.
    public var creditsPerUnit: Credits?
    public var upcoming: [(effectiveAt: Instant, creditsPerUnit: Credits)]

    public static func == (a: ProductView, b: ProductView) -> Bool {
        a.product == b.product && a.creditsPerUnit == b.creditsPerUnit && a.upcoming.map(\.effectiveAt) == b.upcoming.map(\.effectiveAt)
            && a.upcoming.map(\.creditsPerUnit) == b.upcoming.map(\.creditsPerUnit)
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(product) }
}

extension Ledger {
    /// The live members of an account, in slot order, at most `limit`; nil for an unknown
    /// account. It looks at every member of the ledger: call it on a copy (LedgerService does),
    /// not under the lock decisions take.
    public func members(of account: String, limit: Int, at now: Instant) -> [MemberView]? {
        guard let slot = accountSlots[HashedString(account)] else { return nil }
        var out: [MemberView] = []
        for member in members where member.isLive && member.account == slot {
            if out.count == limit { break }
            out.append(
                MemberView(
                    id: member.id, cap: member.capLimit, consumed: member.usage.consumed(at: now), held: member.usage.held,
                    available: member.available, openHolds: member.openHolds, groups: member.groups.map { groups[Int($0)].id },
                    openHoldsLimit: member.holdLimit ?? accounts[Int(slot)].memberHoldLimit,
                    caps: capViews(capLimit: member.capLimit, usage: member.usage, windows: member.windows, period: accounts[Int(slot)].period, at: now)))
        }
        return out
    }

    /// The open holds of an account by id, at most `limit`; nil for an unknown account. It
    /// looks at every open hold: call it on a copy.
    public func openHolds(of account: String, limit: Int) -> [HoldView]? {
        guard let slot = accountSlots[HashedString(account)] else { return nil }
        var ids: [HoldID] = []
        for hold in holds.values where hold.account == slot { ids.append(hold.id) }
        return ids.sorted().prefix(limit).compactMap { hold($0) }
    }

    /// Every product of the rate card, by name.
    public func products(at now: Instant) -> [ProductView] {
        rates.map { key, history in
            let current = history.version(at: now)?.creditsPerUnit
            let upcoming = history.versions.filter { $0.effectiveAt > now }.compactMap { version in
                version.creditsPerUnit.map { (effectiveAt: version.effectiveAt, creditsPerUnit: $0) }
            }
            return ProductView(product: key.string, creditsPerUnit: current, upcoming: upcoming)
        }.sorted { $0.product < $1.product }
    }

    /// Every plan template, by name.
    public var planTemplates: [Plan] {
        plans.values.sorted { $0.name < $1.name }
    }
}
