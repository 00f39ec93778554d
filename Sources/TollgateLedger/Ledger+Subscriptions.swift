/// Seat subscriptions: included credits issued every billing period, seats that change with
/// an effective time, proration, rollover and what happens to a seat's credits when it goes.
///
/// Everything here is driven by commands and by time events (`periodBoundary`, `seatChange`)
/// processed in instant order by `advance(to:)`, so replaying the journal turns the same
/// periods at the same instants, and a server that was down across a boundary catches up at
/// start: each missed period is issued and expired in turn.
struct SubscriptionState: Hashable, Sendable {
    /// The terms in force; nil when the subscription has ended (the seat count stays).
    var terms: Subscription?
    /// Terms from the next boundary on; `.some(nil)` ends the subscription there.
    var nextTerms: Subscription??
    /// A pooled subscription's seat count.
    var seats: Int64 = 0
    var pendingSeats: PendingSeats?
    var periodStart: Instant
    var periodEnd: Instant
    /// The included grants issued for the current period (by the period turning, a start,
    /// an added seat or member): what rollover and claw-back look at.
    var included: [GrantID] = []
    /// A per-member subscription's seat holders: the account's live members.
    var seatMembers: [Int32] = []

    struct PendingSeats: Hashable, Sendable {
        var at: Instant
        var seats: Int64
    }
}

/// A subscription as the balance shows it.
public struct SubscriptionView: Hashable, Sendable {
    public struct SeatChange: Hashable, Sendable {
        public var at: Instant
        public var seats: Int64

        public init(at: Instant, seats: Int64) {
            self.at = at
            self.seats = seats
        }
    }

    public var terms: Subscription
    /// Pooled: the seat count; per member: the number of members.
    public var seats: Int64
    public var periodStart: Instant
    public var periodEnd: Instant
    /// Terms that take over at `periodEnd`; `.some(nil)` when the subscription ends there.
    public var nextTerms: Subscription??
    public var pendingSeats: SeatChange?

    public init(terms: Subscription, seats: Int64, periodStart: Instant, periodEnd: Instant, nextTerms: Subscription?? = nil, pendingSeats: SeatChange? = nil) {
        self.terms = terms
        self.seats = seats
        self.periodStart = periodStart
        self.periodEnd = periodEnd
        self.nextTerms = nextTerms
        self.pendingSeats = pendingSeats
    }
}

extension Ledger {
    // MARK: - Commands

    mutating func setSubscription(_ account: String, terms: Subscription?, at now: Instant) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        let existing = subscriptions[slot]
        guard let terms else {
            guard existing?.terms != nil else {
                return refused(LedgerError(.invalidArgument, level: .account, subject: "the account has no subscription to end"))
            }
            subscriptions[slot]!.nextTerms = .some(nil)
            return .done
        }
        // Every seat count that can come into force under these terms: today's and a pending one.
        for seats in [existing?.seats ?? 0, existing?.pendingSeats?.seats ?? 0] {
            if let error = problem(subscription: terms, seats: seats, account: slot) { return refused(error) }
        }
        if var state = existing, state.terms != nil {
            // A change takes effect at the next boundary; the current period keeps its credits.
            state.nextTerms = state.terms == terms ? nil : .some(terms)
            subscriptions[slot] = state
            return .done
        }
        let window = accounts[Int(slot)].period.window(containing: now)
        var state = existing ?? SubscriptionState(periodStart: window.start, periodEnd: window.end)
        state.terms = terms
        state.nextTerms = nil
        state.periodStart = window.start
        state.periodEnd = window.end
        state.included = []
        state.seatMembers = terms.scope == .perMember ? liveMembers(of: slot) : []
        subscriptions[slot] = state
        // The boundary is scheduled before the period's grants, so at that instant it runs
        // before their expiry and sees what is left of them.
        schedule(.periodBoundary(account: slot, end: window.end), at: window.end)
        issueIncluded(slot, from: now)
        return .done
    }

    mutating func setSeats(_ account: String, seats: Int64, effectiveAt: Instant, at now: Instant) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        guard seats >= 0, seats <= limits.seatsPerAccountMax else {
            return refused(LedgerError(.amountOutOfRange, level: .request, subject: "seats must be 0 to \(limits.seatsPerAccountMax)"))
        }
        let window = accounts[Int(slot)].period.window(containing: now)
        var state = subscriptions[slot] ?? SubscriptionState(periodStart: window.start, periodEnd: window.end)
        if let terms = state.terms {
            guard terms.scope == .pooled else {
                return refused(LedgerError(.invalidArgument, level: .account, subject: "a per-member subscription's seats are its members"))
            }
        }
        // Every set of terms the count can meet: today's, and those waiting for the next boundary.
        for case let terms? in [state.terms, state.nextTerms ?? nil] {
            if let error = problem(subscription: terms, seats: seats, account: slot) { return refused(error) }
        }
        if effectiveAt <= now {
            state.pendingSeats = nil
            subscriptions[slot] = state
            changeSeats(slot, to: seats, at: now)
        } else {
            state.pendingSeats = SubscriptionState.PendingSeats(at: effectiveAt, seats: seats)
            subscriptions[slot] = state
            schedule(.seatChange(account: slot, at: effectiveAt), at: effectiveAt)
        }
        return .done
    }

    /// What is wrong with subscription terms meeting a seat count (and, per member, the
    /// account's members; nil `account` for a plan not yet provisioned), or nil. The one check
    /// SET_SUBSCRIPTION, SET_SEATS, DEFINE_PLAN and PROVISION run, for every pairing of terms
    /// and seats that can come into force, so a period that turns never meets an amount the
    /// ledger would refuse: seats × credits per seat stays within `creditsMax`.
    func problem(subscription terms: Subscription, seats: Int64, account: Int32?) -> LedgerError? {
        if let error = validateCredits(terms.creditsPerSeat, "credits per seat", allowZero: true) { return error }
        if let error = validateCredits(terms.rolloverCap, "rollover cap", allowZero: true) { return error }
        switch terms.scope {
        case .pooled:
            let (total, overflow) = seats.multipliedReportingOverflow(by: terms.creditsPerSeat)
            guard !overflow, total <= limits.creditsMax else {
                return LedgerError(.amountOutOfRange, level: .account, subject: "seats × credits per seat must be at most \(limits.creditsMax)")
            }
        case .perMember:
            if let account, accounts[Int(account)].memberCount > limits.seatMembersPerAccountMax {
                return LedgerError(.limitReached, level: .account, subject: "members of a per-member subscription")
            }
        }
        return nil
    }

    // MARK: - Time events

    /// The end of a period: unused included credits roll over up to the cap, the terms
    /// change if a change was waiting, and the next period's credits are issued.
    mutating func turnPeriod(_ slot: Int32, at end: Instant) {
        guard var state = subscriptions[slot], let terms = state.terms, state.periodEnd == end else { return }
        let next = state.nextTerms ?? terms
        state.nextTerms = nil
        guard let next else {
            // Ended: the period's credits expire by themselves; nothing more is issued.
            state.terms = nil
            state.included = []
            state.seatMembers = []
            subscriptions[slot] = state
            return
        }
        // What rolls over, by pool (noSlot) or member, from what is left of this period's
        // included credits. They expire at this same instant, after this event.
        var carried: [(member: Int32, amount: Credits)] = []
        if terms.rolloverCap > 0 {
            var unused: [Int32: Credits] = [:]
            for id in state.included {
                guard let grant = grantSlotByID[id].map({ grants[Int($0)] }), grant.state == .active, grant.account == slot else { continue }
                unused[grant.member, default: 0] += grant.available
            }
            for (member, amount) in unused.sorted(by: { $0.key < $1.key }) where amount > 0 {
                if member != noSlot && !state.seatMembers.contains(member) { continue }
                carried.append((member, min(amount, terms.rolloverCap)))
            }
        }
        var window = accounts[Int(slot)].period.window(containing: end)
        if window.end <= end { window = (end, accounts[Int(slot)].period.window(containing: end.adding(microseconds: 1)).end) }
        state.terms = next
        state.periodStart = end
        state.periodEnd = window.end
        state.included = []
        if next.scope == .perMember && terms.scope != .perMember { state.seatMembers = liveMembers(of: slot) }
        if next.scope == .pooled { state.seatMembers = [] }
        subscriptions[slot] = state
        schedule(.periodBoundary(account: slot, end: window.end), at: window.end)
        for carry in carried {
            subscriptionCreditsIssued &+= carry.amount
            _ = createGrant(
                account: slot, member: carry.member, amount: carry.amount, priority: next.priority, effectiveAt: end, expiresAt: window.end,
                source: .rollover, at: end)
        }
        issueIncluded(slot, from: end)
    }

    mutating func applyPendingSeats(_ slot: Int32, at instant: Instant) {
        guard let pending = subscriptions[slot]?.pendingSeats, pending.at == instant else { return }
        subscriptions[slot]!.pendingSeats = nil
        changeSeats(slot, to: pending.seats, at: instant)
    }

    // MARK: - Seats and members

    private mutating func changeSeats(_ slot: Int32, to seats: Int64, at now: Instant) {
        guard var state = subscriptions[slot] else { return }
        let old = state.seats
        state.seats = seats
        subscriptions[slot] = state
        guard let terms = state.terms, terms.scope == .pooled, seats != old else { return }
        if seats > old {
            let amount = share(Credits.product(seats - old, terms.creditsPerSeat), of: state, from: now, prorate: terms.prorate)
            issue(slot, member: noSlot, amount: amount, terms: terms, at: now)
        } else if terms.removal == .clawBack {
            let amount = share(Credits.product(old - seats, terms.creditsPerSeat), of: state, from: now, prorate: true)
            clawBack(amount, from: state.included, account: slot, member: noSlot)
        }
    }

    /// A member joining a per-member subscription gets its seat's credits for the rest of
    /// the period. Checked before the member is added.
    func admitsSeatMember(_ slot: Int32) -> LedgerError? {
        guard let terms = subscriptions[slot]?.terms, terms.scope == .perMember else { return nil }
        guard accounts[Int(slot)].memberCount < limits.seatMembersPerAccountMax else {
            return LedgerError(.limitReached, level: .account, subject: "members of a per-member subscription")
        }
        return nil
    }

    mutating func seatMemberAdded(_ member: Int32, account slot: Int32, at now: Instant) {
        guard var state = subscriptions[slot], let terms = state.terms, terms.scope == .perMember else { return }
        state.seatMembers.append(member)
        subscriptions[slot] = state
        issue(slot, member: member, amount: share(terms.creditsPerSeat, of: state, from: now, prorate: terms.prorate), terms: terms, at: now)
    }

    /// Before a member of a per-member subscription is removed: with `keep`, what is left of
    /// its included and rolled-over credits moves to the pool until the period ends; with
    /// `clawBack` it is voided with the member's other grants.
    mutating func seatMemberRemoving(_ member: Int32, account slot: Int32, at now: Instant) {
        guard var state = subscriptions[slot], let terms = state.terms, terms.scope == .perMember else { return }
        state.seatMembers.removeAll { $0 == member }
        subscriptions[slot] = state
        guard terms.removal == .keep else { return }
        var left: Credits = 0
        for grant in members[Int(member)].grantOrder {
            let record = grants[Int(grant)]
            if record.source == .recurring || record.source == .rollover { left += record.available }
        }
        guard left > 0, state.periodEnd > now else { return }
        subscriptionCreditsIssued &+= left
        _ = createGrant(
            account: slot, member: noSlot, amount: left, priority: terms.priority, effectiveAt: now, expiresAt: state.periodEnd, source: .rollover,
            at: now)
    }

    // MARK: - Helpers

    /// Issues the current period's included credits from `instant` on (prorated when the
    /// terms say so and the period has already begun).
    private mutating func issueIncluded(_ slot: Int32, from instant: Instant) {
        guard let state = subscriptions[slot], let terms = state.terms else { return }
        switch terms.scope {
        case .pooled:
            let amount = share(Credits.product(state.seats, terms.creditsPerSeat), of: state, from: instant, prorate: terms.prorate)
            issue(slot, member: noSlot, amount: amount, terms: terms, at: instant)
        case .perMember:
            let amount = share(terms.creditsPerSeat, of: state, from: instant, prorate: terms.prorate)
            for member in state.seatMembers { issue(slot, member: member, amount: amount, terms: terms, at: instant) }
        }
    }

    /// One included grant, effective at `instant` (an event's own instant while the ledger
    /// catches up, not the clock it is catching up to) until the period ends.
    private mutating func issue(_ slot: Int32, member: Int32, amount: Credits, terms: Subscription, at instant: Instant) {
        guard amount > 0, let state = subscriptions[slot], state.periodEnd > instant else { return }
        // The checks above keep it within creditsMax; a state from before a check existed is
        // held to it here rather than handed a grant no command could make.
        let amount = min(amount, limits.creditsMax)
        subscriptionCreditsIssued &+= amount
        let id = createGrant(
            account: slot, member: member, amount: amount, priority: terms.priority, effectiveAt: instant, expiresAt: state.periodEnd,
            source: .recurring, at: instant)
        subscriptions[slot]!.included.append(id)
    }

    /// `total` for the part of the period from `instant` on, by days: `total × days left /
    /// days in the period`, rounded down, where the day of the change counts whole (a seat
    /// added on the first day of a period brings all its credits; one added on January 3rd
    /// brings 29/31). Days are counted from the period's own start, in integers wide enough
    /// not to overflow; a period shorter than a day is never prorated.
    func share(_ total: Credits, of state: SubscriptionState, from instant: Instant, prorate: Bool) -> Credits {
        guard prorate, instant > state.periodStart else { return total }
        guard instant < state.periodEnd else { return 0 }
        let day = Microseconds.perDay
        let daysLeft = (state.periodEnd.microseconds(since: instant) + day - 1) / day
        let days = (state.periodEnd.microseconds(since: state.periodStart) + day - 1) / day
        let product = total.multipliedFullWidth(by: daysLeft)
        return days.dividingFullWidth(product).quotient
    }

    /// Voids up to `amount` of what is still available on these grants.
    private mutating func clawBack(_ amount: Credits, from ids: [GrantID], account: Int32, member: Int32) {
        var left = amount
        for id in ids.reversed() where left > 0 {
            guard let grant = grantSlotByID[id], grants[Int(grant)].account == account, grants[Int(grant)].member == member else { continue }
            left -= voidPart(grant, upTo: left)
        }
    }

    /// The account's live members, in slot order.
    func liveMembers(of account: Int32) -> [Int32] {
        var found: [Int32] = []
        for (slot, member) in members.enumerated() where member.isLive && member.account == account { found.append(Int32(slot)) }
        return found
    }

    /// The subscription of an account, for balances.
    func subscriptionView(_ slot: Int32) -> SubscriptionView? {
        guard let state = subscriptions[slot], let terms = state.terms else { return nil }
        let seats = terms.scope == .pooled ? state.seats : Int64(state.seatMembers.count)
        return SubscriptionView(
            terms: terms, seats: seats, periodStart: state.periodStart, periodEnd: state.periodEnd, nextTerms: state.nextTerms,
            pendingSeats: state.pendingSeats.map { SubscriptionView.SeatChange(at: $0.at, seats: $0.seats) })
    }
}
