/// Balance alerts and auto-recharge, and the events they produce.
///
/// An alert watches what an account holds (its pool plus its members' own grants) or what
/// one member holds; it fires once when that falls to its threshold or below and re-arms once
/// it rises above it again. An auto-recharge adds a top-up when the account falls below a
/// level, at most so many times per billing period. Both are evaluated after every command
/// and every time event that touches the account, in the ledger, so replaying the journal
/// produces the same events with the same sequence numbers at the same instants: the server
/// delivers them from there, and a restart regenerates rather than loses them.

/// A balance alert.
public struct AlertRule: Hashable, Sendable {
    public enum Threshold: Hashable, Sendable {
        /// At or below this many credits.
        case credits(Credits)
        /// At or below this percentage of the period's allotment (the subscription's included
        /// credits: all seats' for the account, one seat's for a member).
        case percentOfAllotment(Int64)
        /// Nothing left: at or below zero.
        case depleted
    }

    /// Names the alert within its account; setting an alert with the same id replaces it.
    public var id: String
    /// nil watches the account; otherwise this member's own credits.
    public var member: String?
    public var threshold: Threshold

    public init(id: String, member: String? = nil, threshold: Threshold) {
        self.id = id
        self.member = member
        self.threshold = threshold
    }
}

/// Tops an account up when it runs low.
public struct AutoRecharge: Hashable, Sendable {
    /// Recharge when what the account holds falls below this.
    public var below: Credits
    /// How much to add; with `upTo`, the most to add.
    public var amount: Credits
    /// If set, add what brings the account back up to this (at most `amount`).
    public var upTo: Credits?
    /// At most this many recharges per billing period.
    public var maxPerPeriod: Int64
    public var priority: Int32
    /// How long each top-up lasts (nil: never expires).
    public var expiresAfterMicroseconds: Int64?

    public init(below: Credits, amount: Credits, upTo: Credits? = nil, maxPerPeriod: Int64, priority: Int32 = 100, expiresAfterMicroseconds: Int64? = nil) {
        self.below = below
        self.amount = amount
        self.upTo = upTo
        self.maxPerPeriod = maxPerPeriod
        self.priority = priority
        self.expiresAfterMicroseconds = expiresAfterMicroseconds
    }
}

/// Something the ledger did by itself that the billing system or a person must hear about.
public struct LedgerEvent: Hashable, Sendable {
    public enum Kind: Hashable, Sendable {
        /// An alert fired: the balance is at or below its threshold.
        case alert(id: String, threshold: Credits, balance: Credits)
        /// A depletion alert fired: nothing is left.
        case depleted(id: String, balance: Credits)
        /// An auto-recharge added a top-up grant.
        case recharged(grant: GrantID, amount: Credits, balance: Credits)
        /// A soft cap's window is used past its limit (Ledger+Windows.swift): `subject` is the
        /// member, group or account id of `level`, `used` its consumed plus held in the window.
        case softLimit(level: LedgerError.Level, subject: String, window: CapWindow, limit: Credits, used: Credits)
    }

    /// Increases by one per event, over the ledger's whole history: an event's id for
    /// de-duplication, and a delivery cursor.
    public var sequence: UInt64
    public var at: Instant
    public var account: String
    public var member: String?
    public var kind: Kind

    public init(sequence: UInt64, at: Instant, account: String, member: String?, kind: Kind) {
        self.sequence = sequence
        self.at = at
        self.account = account
        self.member = member
        self.kind = kind
    }
}

struct AlertState: Hashable, Sendable {
    var rule: AlertRule
    /// `noSlot` for the account.
    var member: Int32
    var armed = true
}

struct RechargeState: Hashable, Sendable {
    var rule: AutoRecharge
    var count: Int64 = 0
    /// The end of the billing window `count` is for.
    var windowEnd: Instant
}

/// Events produced and not yet taken. Not part of the ledger's state: equality, hashing and
/// snapshots ignore it (a replay produces the events again). Bounded: past `capacity` the
/// oldest are dropped and counted.
public struct EventOutbox: Hashable, Sendable {
    var events: [LedgerEvent] = []
    public private(set) var dropped = 0
    var capacity = 100_000

    mutating func append(_ event: LedgerEvent) {
        if events.count >= capacity {
            events.removeFirst(events.count - capacity + 1)
            dropped += 1
        }
        events.append(event)
    }

    public static func == (lhs: EventOutbox, rhs: EventOutbox) -> Bool { true }
    public func hash(into hasher: inout Hasher) {}
}

extension Ledger {
    // MARK: - Commands

    /// What is wrong with an alert rule's own fields, or nil: the one check that every way in
    /// (SET_ALERT, DEFINE_PLAN, PROVISION) runs, so no rule the ledger would refuse is ever
    /// stored where a later step must accept it.
    func problem(alert rule: AlertRule) -> LedgerError? {
        if let error = validateIdentifier(rule.id, "alert") { return error }
        switch rule.threshold {
        case .credits(let credits):
            if let error = validateCredits(credits, "alert threshold", allowZero: true) { return error }
        case .percentOfAllotment(let percent):
            guard percent >= 0, percent <= 100 else {
                return LedgerError(.amountOutOfRange, level: .request, subject: "alert percentage must be 0 to 100")
            }
        case .depleted:
            break
        }
        return nil
    }

    /// What is wrong with an auto-recharge rule's own fields, or nil; as `problem(alert:)`.
    func problem(recharge rule: AutoRecharge) -> LedgerError? {
        if let error = validateCredits(rule.below, "recharge level", allowZero: true) { return error }
        if let error = validateCredits(rule.amount, "recharge amount") { return error }
        if let upTo = rule.upTo, let error = validateCredits(upTo, "recharge target") { return error }
        guard rule.maxPerPeriod >= 1, rule.maxPerPeriod <= 10_000 else {
            return LedgerError(.amountOutOfRange, level: .request, subject: "recharges per period must be 1 to 10000")
        }
        if let lifetime = rule.expiresAfterMicroseconds, lifetime <= 0 {
            return LedgerError(.invalidArgument, level: .request, subject: "a recharge's lifetime must be positive")
        }
        return nil
    }

    mutating func setAlert(_ account: String, rule: AlertRule, at now: Instant) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        if let error = validateIdentifier(rule.id, "alert") { return refused(error) }
        var memberSlot = noSlot
        if let member = rule.member {
            guard let found = memberSlots[MemberKey(account: slot, member: member)] else {
                return refused(LedgerError(.unknownMember, level: .member, subject: member))
            }
            memberSlot = found
        }
        if let error = problem(alert: rule) { return refused(error) }
        var states = alerts[slot] ?? []
        if let index = states.firstIndex(where: { $0.rule.id == rule.id }) {
            states[index] = AlertState(rule: rule, member: memberSlot)
        } else {
            guard states.count < limits.alertsPerAccountMax else {
                return refused(LedgerError(.limitReached, level: .account, subject: "alerts per account"))
            }
            states.append(AlertState(rule: rule, member: memberSlot))
        }
        alerts[slot] = states
        accounts[Int(slot)].isWatched = true
        // A new alert starts armed and is checked at once: one set below the current balance
        // fires now.
        evaluateWatches(slot, at: now)
        return .done
    }

    mutating func removeAlert(_ account: String, id: String) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        guard var states = alerts[slot], let index = states.firstIndex(where: { $0.rule.id == id }) else {
            return refused(LedgerError(.invalidArgument, level: .account, subject: "no alert \(id)"))
        }
        states.remove(at: index)
        alerts[slot] = states.isEmpty ? nil : states
        accounts[Int(slot)].isWatched = alerts[slot] != nil || recharges[slot] != nil
        return .done
    }

    mutating func setAutoRecharge(_ account: String, rule: AutoRecharge?, at now: Instant) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        guard let rule else {
            recharges[slot] = nil
            accounts[Int(slot)].isWatched = alerts[slot] != nil
            return .done
        }
        if let error = problem(recharge: rule) { return refused(error) }
        let window = accounts[Int(slot)].period.window(containing: now)
        var state = recharges[slot] ?? RechargeState(rule: rule, windowEnd: window.end)
        state.rule = rule
        // Recharges already made this period count against a new, lower limit as its whole.
        state.count = min(state.count, rule.maxPerPeriod)
        recharges[slot] = state
        accounts[Int(slot)].isWatched = true
        evaluateWatches(slot, at: now)
        return .done
    }

    /// A removed member's alerts go with it (its slot may be reused by another member).
    mutating func dropAlerts(member: Int32, account slot: Int32) {
        guard var states = alerts[slot] else { return }
        states.removeAll { $0.member == member }
        alerts[slot] = states.isEmpty ? nil : states
        accounts[Int(slot)].isWatched = alerts[slot] != nil || recharges[slot] != nil
    }

    // MARK: - Evaluation

    /// What an account holds now: its pool and its members' own grants.
    func heldFunds(_ slot: Int32) -> Credits {
        accounts[Int(slot)].poolAvailable + accounts[Int(slot)].membersAvailable
    }

    /// After anything that may have moved an account's balance: recharge if it is low, then
    /// fire or re-arm its alerts. `at` is the instant of the command or time event.
    mutating func evaluateWatches(_ slot: Int32, at instant: Instant) {
        guard accounts[Int(slot)].isWatched else { return }
        if var state = recharges[slot] {
            if instant >= state.windowEnd {
                state.count = 0
                state.windowEnd = accounts[Int(slot)].period.window(containing: instant).end
            }
            let balance = heldFunds(slot)
            if balance < state.rule.below && state.count < state.rule.maxPerPeriod {
                let amount = state.rule.upTo.map { min(state.rule.amount, max(0, $0 - balance)) } ?? state.rule.amount
                if amount > 0, accounts[Int(slot)].liveGrants < limits.grantsPerAccountMax {
                    let expiresAt = state.rule.expiresAfterMicroseconds.map { instant.adding(microseconds: $0) } ?? .distantFuture
                    let grant = createGrant(
                        account: slot, member: noSlot, amount: amount, priority: state.rule.priority, effectiveAt: instant, expiresAt: expiresAt,
                        source: .topUp, at: instant)
                    rechargeCreditsIssued &+= amount
                    state.count += 1
                    emit(slot, member: noSlot, at: instant, .recharged(grant: grant, amount: amount, balance: heldFunds(slot)))
                }
            }
            recharges[slot] = state
        }
        guard var states = alerts[slot] else { return }
        for index in states.indices {
            let state = states[index]
            let member = state.member
            if member != noSlot && !members[Int(member)].isLive { continue }
            let balance = member == noSlot ? heldFunds(slot) : members[Int(member)].available
            let threshold: Credits
            switch state.rule.threshold {
            case .credits(let credits): threshold = credits
            case .depleted: threshold = 0
            case .percentOfAllotment(let percent): threshold = Credits.percent(percent, of: allotment(slot, member: member))
            }
            if state.armed && balance <= threshold {
                states[index].armed = false
                if case .depleted = state.rule.threshold {
                    emit(slot, member: member, at: instant, .depleted(id: state.rule.id, balance: balance))
                } else {
                    emit(slot, member: member, at: instant, .alert(id: state.rule.id, threshold: threshold, balance: balance))
                }
            } else if !state.armed && balance > threshold {
                states[index].armed = true
            }
        }
        alerts[slot] = states
    }

    /// The period's included credits: all seats' for the account, one seat's for a member of
    /// a per-member subscription; 0 without a subscription.
    func allotment(_ slot: Int32, member: Int32) -> Credits {
        guard let state = subscriptions[slot], let terms = state.terms else { return 0 }
        switch (terms.scope, member == noSlot) {
        case (.pooled, true): return Credits.product(state.seats, terms.creditsPerSeat)
        case (.pooled, false): return 0
        case (.perMember, true): return Credits.product(Int64(state.seatMembers.count), terms.creditsPerSeat)
        case (.perMember, false): return terms.creditsPerSeat
        }
    }

    mutating func emit(_ slot: Int32, member: Int32, at instant: Instant, _ kind: LedgerEvent.Kind) {
        let event = LedgerEvent(
            sequence: nextEventSequence, at: instant, account: accounts[Int(slot)].id, member: member == noSlot ? nil : members[Int(member)].id,
            kind: kind)
        nextEventSequence += 1
        outbox.append(event)
    }

    /// Hands over the events produced since the last call, oldest first.
    public mutating func takeEvents() -> [LedgerEvent] {
        defer { outbox.events = [] }
        return outbox.events
    }

    /// Whether events are waiting to be taken.
    public var hasPendingEvents: Bool { !outbox.events.isEmpty }

    /// Events dropped because nobody took them before the outbox filled.
    public var eventsDropped: Int { outbox.dropped }

    /// The alerts of an account, for reads.
    public func alertRules(of account: String) -> [(rule: AlertRule, armed: Bool)] {
        guard let slot = accountSlots[HashedString(account)] else { return [] }
        return (alerts[slot] ?? []).map { ($0.rule, $0.armed) }
    }

    public func autoRecharge(of account: String) -> (rule: AutoRecharge, usedThisPeriod: Int64)? {
        guard let slot = accountSlots[HashedString(account)], let state = recharges[slot] else { return nil }
        return (state.rule, state.count)
    }
}
