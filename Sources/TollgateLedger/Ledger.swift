/// The in-memory ledger: accounts, members, groups, grants, rates, holds and the decision.
///
/// It does no I/O and reads no clock. Every change goes through `apply(_:key:at:)` with the
/// instant it is decided at; reads (`check`, `balance`) also take an instant. The ledger never
/// moves backwards in time: an instant earlier than one already seen is treated as that one,
/// and `apply` reports the instant it actually used so the journal can record it.
///
/// Time-driven effects (holds past their deadline, grants becoming effective or expiring, cap
/// periods rolling over, idempotency keys being forgotten) happen in `advance(to:)`, which
/// every operation calls first. Advancing to t1 and then to t2 gives the same state as
/// advancing straight to t2, so reads may advance the ledger without being journaled.
///
/// It is a value type meant to be owned by one thread; the server serialises access to it.
public struct Ledger: Hashable, Sendable {
    public let limits: LedgerLimits
    /// The latest instant the ledger has seen.
    public private(set) var clock: Instant

    var accountSlots: [HashedString: Int32] = [:]
    var accounts = ChunkedArray<AccountRecord>()
    var members = ChunkedArray<MemberRecord>()
    /// Every live member of every account, by (account, member id).
    var memberSlots: [MemberKey: Int32] = [:]
    var freeMemberSlots: [Int32] = []
    var liveMemberCount = 0
    var groups = ChunkedArray<GroupRecord>()
    var grants = ChunkedArray<GrantRecord>()
    var freeGrantSlots: [Int32] = []
    var grantSlotByID = ShardedTable<GrantID, Int32>()
    var nextGrantID: GrantID = 1
    var holds = HoldTable()
    var nextHoldID: HoldID = 1
    var rates: [HashedString: RateHistory] = [:]
    var events = EventQueue()
    var idempotency = IdempotencyTable()
    var resolvedHolds = ResolvedHolds()
    /// Keys the full table handed on, for the server's disk tier (KeyTiers.swift).
    var evicted = EvictedKeys()
    /// Keys forgotten before their retention because the table was full and had nowhere
    /// to hand them on.
    public internal(set) var idempotencyKeysForgottenEarly = 0
    /// What retired grants ended with, so ledger-wide totals stay whole after their slots are reused.
    var retiredTotals = CreditTotals()
    /// Seat subscriptions, by account slot. Kept apart from the account records so the
    /// decision path does not carry them.
    var subscriptions: [Int32: SubscriptionState] = [:]
    /// Credits the ledger granted itself on behalf of subscriptions (included, rolled over,
    /// moved from a removed member), so ledger-wide totals can be checked against what was
    /// granted by command plus this. Kept modulo 2^64, as `CreditTotals` are.
    public internal(set) var subscriptionCreditsIssued: Credits = 0
    var alerts: [Int32: [AlertState]] = [:]
    var recharges: [Int32: RechargeState] = [:]
    /// The sequence number of the next event (alerts, recharges).
    public internal(set) var nextEventSequence: UInt64 = 1
    /// Credits granted by auto-recharges, modulo 2^64.
    public internal(set) var rechargeCreditsIssued: Credits = 0
    /// Events not yet taken by the server; not part of the state (see `EventOutbox`).
    var outbox = EventOutbox()
    /// Consumption over the last minute and hour, by account and by member slot.
    /// Indexed by account and member slot (no hashing on the decision path); grown as the
    /// tables grow, and each window allocated on first use.
    var accountBurn = ChunkedArray<BurnWindow>()
    var memberBurn = ChunkedArray<BurnWindow>()
    var ledgerBurn = BurnWindow()
    var plans: [String: Plan] = [:]
    /// Whether any level may have window caps or open-hold bounds (Ledger+Windows.swift), or any
    /// grant be scoped to products (Ledger+Scopes.swift): set when one is set, a family that has
    /// some moves in, or a snapshot that has some is read, so a ledger that uses none checks one
    /// flag per decision. Not part of the state.
    var rulesInUse = RulesHint()
    /// The products each product-scoped grant covers, by grant id (sorted, without repeats).
    var grantProducts: [GrantID: [String]] = [:]
    /// Metered products' dimension rates, and the rates each open metered hold was priced at
    /// (Ledger+Metered.swift).
    var meteredRates: [HashedString: [String: MeteredHistory]] = [:]
    var holdRates: [HoldID: [PricedDimension]] = [:]
    /// Accounts frozen by `moveFamilyOut`, by slot (Ledger+Move.swift). Empty on a ledger that
    /// never moved a family out, and then never looked at on the decision path.
    var movedOut: [Int32: MovedFamily] = [:]
    /// The end of the hold and grant id space (`useIDSpace(tag:)`); no end without one.
    var idSpaceEnd: UInt64 = .max

    public init(limits: LedgerLimits = LedgerLimits(), startingAt start: Instant = .epoch) {
        self.limits = limits
        self.clock = start
    }

    /// Reserves room so that a ledger of known size grows without rehashing on the hot path.
    public mutating func reserveCapacity(accounts accountCount: Int, members memberCount: Int, holds holdCount: Int, idempotencyKeys: Int) {
        accountSlots.reserveCapacity(accountCount)
        accounts.reserveCapacity(accountCount)
        members.reserveCapacity(memberCount)
        memberSlots.reserveCapacity(memberCount)
        holds.reserveCapacity(holdCount)
        idempotency.reserveCapacity(idempotencyKeys)
    }

    /// Sizes the idempotency index for `limits.idempotencyKeysMax` keys now (32 bytes a key),
    /// so it never doubles while serving: doubling a million-key index rehashes every key in
    /// one step, a pause of milliseconds on the decision path.
    public mutating func reserveIdempotencyIndex() {
        idempotency.reserveCapacity(limits.idempotencyKeysMax)
    }

    // MARK: - Applying commands

    /// Applies one command at `instant` (or at the ledger's clock, if that is later) under an
    /// idempotency key. A retry with the same key and the same command gets the first answer
    /// back without changing anything; the same key with a different command is refused with
    /// `.idempotencyConflict`. Keys are scoped by the command's account.
    @discardableResult
    public mutating func apply(_ command: Command, key: String, at instant: Instant) -> Answer {
        applyRecording(command, key: key, at: instant).answer
    }

    /// What `applyRecording` did: the answer, the instant it was decided at, and whether the
    /// ledger changed — which is when the journal must record the command. Retries, key
    /// conflicts and refusals of bad input change nothing but the clock.
    public struct Applied: Sendable {
        public var answer: Answer
        public var instant: Instant
        public var changedState: Bool
    }

    /// `apply`, telling the caller whether the command has to be journaled and at what instant.
    /// A key the table does not hold is looked for in `older` (the server's disk tier) before
    /// the command is taken as new; a key found there answers as it would from the table.
    public mutating func applyRecording(_ command: Command, key: String, at instant: Instant) -> Applied {
        applyRecording(command, key: key, at: instant, older: NoOlderKeys?.none)
    }

    /// `applyRecording` with a tier of older keys. Generic rather than `any OlderKeys`: copying
    /// an optional existential in and out cost about 280 instructions per reserve+commit pair.
    /// Inlinable, so the server's call is specialized for its tier: unspecialized, every call
    /// looked up the generic metadata of `Older?` at run time (1.5 % of the event loop at
    /// saturation, `bench/profile closed`). The work is in the non-generic steps it calls.
    @inlinable
    public mutating func applyRecording<Older: OlderKeys>(_ command: Command, key: String, at instant: Instant, older: Older?) -> Applied {
        switch beginApplying(command, key: key, at: instant) {
        case .answered(let applied):
            return applied
        case .new(let pending):
            if let older, let archived = older.find(low: pending.low, high: pending.high), let applied = answerFromOlderTier(archived, key: key, pending) {
                return applied
            }
            return finishApplying(command, pending)
        }
    }

    /// A command's key found new in the table, on its way to being decided.
    @usableFromInline
    struct PendingApply {
        @usableFromInline let low: UInt64
        @usableFromInline let high: UInt64
        let fingerprint: UInt64
        let now: Instant
    }

    @usableFromInline
    enum ApplyStart {
        /// Answered without deciding: a bad key, a retry answered from the table, a conflict.
        case answered(Applied)
        case new(PendingApply)
    }

    /// The clock moved to `instant`, the key checked and looked up in the table.
    @usableFromInline
    mutating func beginApplying(_ command: Command, key: String, at instant: Instant) -> ApplyStart {
        let now = advance(to: instant)
        if let error = validateKey(key) { return .answered(Applied(answer: .refused(Refusal(error)), instant: now, changedState: false)) }
        let (scopedKey, fingerprint) = Self.idempotencyKey(command, key)
        switch idempotency.lookup(scopedKey, fingerprint: fingerprint) {
        case .replay(let answer): return .answered(Applied(answer: answer, instant: now, changedState: false))
        case .conflict: return .answered(conflict(key, at: now))
        case .new: return .new(PendingApply(low: scopedKey.low, high: scopedKey.high, fingerprint: fingerprint, now: now))
        }
    }

    /// The answer a tier beyond the table holds for the key, if still within its retention:
    /// the first answer, or a conflict if the command differs. Nil: decide it.
    @usableFromInline
    func answerFromOlderTier(_ archived: ArchivedKey, key: String, _ pending: PendingApply) -> Applied? {
        guard archived.decidedAt.adding(microseconds: limits.idempotencyRetentionMicroseconds) > pending.now else { return nil }
        guard archived.fingerprint == pending.fingerprint else { return conflict(key, at: pending.now) }
        return Applied(answer: archived.answer, instant: pending.now, changedState: false)
    }

    @usableFromInline
    mutating func finishApplying(_ command: Command, _ pending: PendingApply) -> Applied {
        let scopedKey = IdempotencyTable.Key(low: pending.low, high: pending.high)
        let (answer, remembered) = executeRemembering(command, scopedKey, fingerprint: pending.fingerprint, at: pending.now)
        return Applied(answer: answer, instant: pending.now, changedState: remembered)
    }

    private func conflict(_ key: String, at now: Instant) -> Applied {
        Applied(answer: .refused(Refusal(LedgerError(.idempotencyConflict, level: .request, subject: key))), instant: now, changedState: false)
    }

    /// Executes a command found new, lets alerts and recharges react, and remembers its
    /// answer under its key unless the refusal is one that is not remembered: the common tail
    /// of deciding and of replaying.
    @inline(__always)
    private mutating func executeRemembering(
        _ command: Command, _ scopedKey: IdempotencyTable.Key, fingerprint: UInt64, at now: Instant
    ) -> (answer: Answer, remembered: Bool) {
        let answer = execute(command, at: now)
        // Alerts and recharges: a look-up only when some account has them.
        if !alerts.isEmpty || !recharges.isEmpty, !answer.isRefused, let slot = accountSlots[HashedString(command.account)] {
            evaluateWatches(slot, at: now)
            let parent = accounts[Int(slot)].parent
            if parent != noSlot { evaluateWatches(parent, at: now) }
        }
        let remembered = answer.refusal?.error.isRemembered ?? true
        if remembered {
            makeRoomForKey()
            idempotency.remember(scopedKey, fingerprint: fingerprint, answer: answer, decidedAt: now)
        }
        return (answer, remembered)
    }

    /// Applies a journal record again: the command as it was first decided, which changed the
    /// ledger then, so it is executed whatever the idempotency table holds now. Replay is
    /// independent of the idempotency limits: a key the live table had forgotten early (it
    /// was full) may still be here when the replaying table is larger, and is forgotten now
    /// (with every older key, as the live table forgot them); a full table hands its oldest
    /// key on (or forgets it) as it does live. Balances, holds and every other part of the state come out as
    /// they were live under any configuration; the table keeps at least what the live one did.
    /// `changedState` false means the record did not change the ledger on replay although it
    /// did when decided: the caller reports it.
    public mutating func replay(_ command: Command, key: String, at instant: Instant) -> Applied {
        let now = advance(to: instant)
        if let error = validateKey(key) { return Applied(answer: .refused(Refusal(error)), instant: now, changedState: false) }
        let (scopedKey, fingerprint) = Self.idempotencyKey(command, key)
        var forgot = false
        if idempotency.contains(scopedKey) {
            idempotencyKeysForgottenEarly += idempotency.forget(through: scopedKey)
            forgot = true
        }
        let (answer, remembered) = executeRemembering(command, scopedKey, fingerprint: fingerprint, at: now)
        return Applied(answer: answer, instant: now, changedState: remembered || forgot)
    }

    /// A command's idempotency digest and fingerprint, the account hashed once for both.
    @inline(__always)
    private static func idempotencyKey(_ command: Command, _ key: String) -> (IdempotencyTable.Key, UInt64) {
        let scopeHashes = FastHash.stablePair(command.account)
        return (IdempotencyTable.Key(scopeHashes: scopeHashes, key: key), command.fingerprint(accountHash: scopeHashes.first))
    }

    /// The instant `apply` would decide a command at, given `instant`.
    public func decisionInstant(for instant: Instant) -> Instant {
        max(clock, instant)
    }

    private mutating func execute(_ command: Command, at now: Instant) -> Answer {
        if !movedOut.isEmpty, let refusal = movedRefusal(command) { return refusal }
        switch command {
        case .reserve(let reserve): return self.reserve(reserve, at: now)
        case .spend(let spend): return self.spend(spend, at: now)
        case .commit(let commit): return self.commit(commit, at: now)
        case .release(let reference): return self.release(reference, at: now)
        case .extend(let extend): return self.extend(extend, at: now)
        case .reserveMetered(let request, let ttl): return reserveMetered(request, ttlMicroseconds: ttl, at: now)
        case .spendMetered(let request): return spendMetered(request, at: now)
        case .commitMetered(let hold, let dimensions, let isFinal): return commitMetered(hold, dimensions: dimensions, isFinal: isFinal, at: now)
        case .setMeteredRate(let product, let dimension, let rate, let effectiveAt):
            return setMeteredRate(product, dimension: dimension, rate: rate, effectiveAt: effectiveAt, at: now)
        case .createAccount(let create): return createAccount(create, at: now)
        case .setParent(let account, let parent): return setParent(account, parent: parent, at: now)
        case .setOverage(let account, let policy): return setOverage(account, policy: policy)
        case .setPeriod(let account, let period): return setPeriod(account, period: period)
        case .setAccountCap(let account, let limit): return setAccountCap(account, limit: limit)
        case .addMember(let account, let member): return addMember(account, member: member, at: now)
        case .removeMember(let account, let member): return removeMember(account, member: member, at: now)
        case .setMemberCap(let account, let member, let limit): return setMemberCap(account, member: member, limit: limit)
        case .createGroup(let account, let group): return createGroup(account, group: group, at: now)
        case .deleteGroup(let account, let group): return deleteGroup(account, group: group, at: now)
        case .setGroupCap(let account, let group, let limit): return setGroupCap(account, group: group, limit: limit)
        case .addToGroup(let account, let group, let member): return addToGroup(account, group: group, member: member, at: now)
        case .removeFromGroup(let account, let group, let member):
            return removeFromGroup(account, group: group, member: member, at: now)
        case .addGrant(let grant): return addGrant(grant, at: now)
        case .voidGrant(let account, let grant): return voidGrant(account, grant: grant)
        case .setRate(let product, let rate, let effectiveAt):
            return setRate(product, creditsPerUnit: rate, effectiveAt: effectiveAt, at: now)
        case .setAccountRate(let account, let product, let rate, let effectiveAt):
            return setAccountRate(account, product: product, creditsPerUnit: rate, effectiveAt: effectiveAt, at: now)
        case .setSubscription(let account, let terms): return setSubscription(account, terms: terms, at: now)
        case .setSeats(let account, let seats, let effectiveAt): return setSeats(account, seats: seats, effectiveAt: effectiveAt, at: now)
        case .setAlert(let account, let rule): return setAlert(account, rule: rule, at: now)
        case .removeAlert(let account, let id): return removeAlert(account, id: id)
        case .setAutoRecharge(let account, let rule): return setAutoRecharge(account, rule: rule, at: now)
        case .definePlan(let plan): return definePlan(plan, at: now)
        case .provision(let provision): return self.provision(provision, at: now)
        case .moveFamilyOut(let account, let destination): return moveFamilyOut(account, to: destination, at: now)
        case .moveFamilyIn(let account, let transfer): return moveFamilyIn(account, transfer: transfer, at: now)
        case .setCap(let set): return setCap(set, at: now)
        case .setConcurrency(let account, let target, let limit): return setConcurrency(account, target: target, limit: limit)
        }
    }

    // MARK: - Time

    /// The earliest instant at which something happens by itself (a hold deadline, a grant
    /// becoming effective or expiring), if any. A server sweeps at least this often.
    public var nextDue: Instant? { events.next }

    /// Entries in the time-driven event queue, stale ones included (for tests and metrics).
    public var scheduledEventCount: Int { events.count }

    /// Moves the ledger's clock to `instant` (never backwards) and carries out everything due
    /// by then: holds past their deadline are released as expired, grants become effective or
    /// expire, and idempotency keys and resolved holds past their retention are forgotten.
    /// Returns the ledger's clock afterwards.
    @discardableResult
    public mutating func advance(to instant: Instant) -> Instant {
        if instant > clock { clock = instant }
        while let event = events.popDue(at: clock) {
            guard isLive(event) else { continue }
            let account: Int32
            switch event.kind {
            case .holdDeadline(let id):
                let hold = holds[HoldKey(id)]!
                account = hold.account
                finish(hold, as: .expired, at: event.at)
            case .grantEffective(let slot, _):
                account = grants[Int(slot)].account
                activateGrant(slot)
            case .grantExpiry(let slot, _):
                account = grants[Int(slot)].account
                expireGrant(slot)
            case .periodBoundary(let slot, _):
                account = slot
                turnPeriod(slot, at: event.at)
            case .seatChange(let slot, _):
                account = slot
                applyPendingSeats(slot, at: event.at)
            }
            // Alerts and recharges see the balance as of the event's own instant.
            evaluateWatches(account, at: event.at)
            let parent = accounts[Int(account)].parent
            if parent != noSlot { evaluateWatches(parent, at: event.at) }
        }
        idempotency.forget(decidedThrough: clock.adding(microseconds: -limits.idempotencyRetentionMicroseconds))
        resolvedHolds.forget(through: clock)
        return clock
    }

    /// Schedules a time-driven event, first dropping stale ones if they have piled up.
    mutating func schedule(_ kind: EventQueue.Kind, at instant: Instant) {
        if events.needsCompaction { compactEvents() }
        events.schedule(kind, at: instant)
    }

    /// Drops events that no longer match their hold or grant. A plain loop rather than a
    /// closure: a closure here would capture (and copy) the whole ledger for every event.
    @inline(never)
    private mutating func compactEvents() {
        var kept = 0
        for index in 0..<events.count {
            let event = events.event(at: index)
            guard isLive(event) else { continue }
            events.keep(event, at: kept)
            kept += 1
        }
        events.compacted(keeping: kept)
    }

    /// Whether an event still matches the hold or grant it was scheduled for.
    func isLive(_ event: EventQueue.Event) -> Bool {
        // A frozen family's events never fire (Ledger+Move.swift).
        if !movedOut.isEmpty, movedOut[eventAccount(event)] != nil { return false }
        switch event.kind {
        case .holdDeadline(let id):
            guard let slot = holds.slot(of: HoldKey(id)) else { return false }
            return holds[slot: slot].deadline == event.at
        case .grantEffective(let slot, let id):
            let grant = grants[Int(slot)]
            return grant.id == id && grant.isLive && grant.state == .pending
        case .grantExpiry(let slot, let id):
            let grant = grants[Int(slot)]
            return grant.id == id && grant.isLive
        case .periodBoundary(let account, let end):
            guard let state = subscriptions[account] else { return false }
            return state.terms != nil && state.periodEnd == end
        case .seatChange(let account, let at):
            return subscriptions[account]?.pendingSeats?.at == at
        }
    }

    /// The account slot an event belongs to, for a live event's kind (any slot for a stale one).
    private func eventAccount(_ event: EventQueue.Event) -> Int32 {
        switch event.kind {
        case .holdDeadline(let id): return holds.slot(of: HoldKey(id)).map { holds[slot: $0].account } ?? noSlot
        case .grantEffective(let slot, _), .grantExpiry(let slot, _): return grants[Int(slot)].account
        case .periodBoundary(let account, _), .seatChange(let account, _): return account
        }
    }

    // MARK: - Validation helpers

    func validateKey(_ key: String) -> LedgerError? {
        let count = key.utf8.count
        guard count > 0, count <= limits.idempotencyKeyBytesMax else {
            return LedgerError(.invalidArgument, level: .request, subject: "idempotency key must be 1 to \(limits.idempotencyKeyBytesMax) bytes")
        }
        return nil
    }

    /// Identifiers are 1 to `identifierBytesMax` bytes of printable ASCII without spaces, so
    /// they print, log and travel safely.
    func validateIdentifier(_ identifier: String, _ what: String) -> LedgerError? {
        let utf8 = identifier.utf8
        guard !utf8.isEmpty, utf8.count <= limits.identifierBytesMax, utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            return LedgerError(
                .invalidArgument, level: .request,
                subject: "\(what) id must be 1 to \(limits.identifierBytesMax) printable ASCII bytes without spaces")
        }
        return nil
    }

    func validateCredits(_ amount: Credits, _ what: String, allowZero: Bool = false) -> LedgerError? {
        guard amount >= (allowZero ? 0 : 1), amount <= limits.creditsMax else {
            return LedgerError(.amountOutOfRange, level: .request, subject: "\(what) must be \(allowZero ? 0 : 1) to \(limits.creditsMax)")
        }
        return nil
    }
}
