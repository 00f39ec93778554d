
/// Remembers, per (account, key), a fingerprint of the command and the answer it got, for a
/// retention period.
///
/// Built for the hot path and for millions of keys. A key is kept as a 128-bit digest of
/// (account, key), not as strings; the command as a 64-bit fingerprint, not as a value. Both
/// use fixed seeds so a checkpoint can carry them to the next process; the index that finds
/// a digest mixes in a per-process seed, so crafted keys cannot be aimed at one bucket, and it
/// is rebuilt when a checkpoint is loaded (its layout is not part of the table's value). Entries sit in rings in the order they were stored —
/// also the order they expire in, since retention is one fixed span and time only moves
/// forward — and an open-addressing index of 16-byte slots maps a digest to its position.
struct IdempotencyTable: Hashable, Sendable {
    /// The table's value is its entries in order; the index is derived from them.
    static func == (lhs: IdempotencyTable, rhs: IdempotencyTable) -> Bool {
        lhs.firstPosition == rhs.firstPosition && lhs.answers == rhs.answers && lhs.expiries == rhs.expiries
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(firstPosition)
        hasher.combine(expiries.count)
    }

    struct Key: Hashable, Sendable {
        let low: UInt64
        let high: UInt64

        init(scope: String, key: String) {
            self.init(scopeHashes: FastHash.stablePair(scope), key: key)
        }

        /// The digest from the scope's two stable hashes (`FastHash.stablePair`), which the
        /// caller may use again: the fingerprint of a gate command starts with the first.
        init(scopeHashes scope: (first: UInt64, second: UInt64), key: String) {
            let key = FastHash.stablePair(key)
            low = FastHash.mix(scope.first ^ 0x5851_F42D_4C95_7F2D, key.first | 1)
            high = FastHash.mix(scope.second ^ 0x1405_7B7E_F767_814F, key.second | 1)
        }

        init(low: UInt64, high: UInt64) {
            self.low = low
            self.high = high
        }
    }

    struct Stored: Hashable, Sendable {
        var fingerprint: UInt64
        var answer: Answer
    }

    /// A key and the instant its request was decided: a recorded fact (the journal record's
    /// instant). When it is forgotten follows from it and the retention in force.
    struct Expiry: Hashable, Sendable {
        var key: Key
        var at: Instant
    }

    /// An index slot: the digest's low half and the entry's position plus one (zero = empty).
    struct Slot: Hashable, Sendable {
        var tag: UInt64 = 0
        var positionPlusOne: UInt64 = 0
    }

    enum Lookup {
        case new
        case replay(Answer)
        case conflict
    }

    private var slots = ChunkedArray<Slot>(repeating: Slot(), count: 64)
    private var answers: ChunkedArray<Stored> = []
    private var expiries: ChunkedArray<Expiry> = []
    /// The absolute position of the first entry in the rings.
    private var firstPosition: UInt64 = 0

    var count: Int { expiries.count }

    /// The entries in order and the position of the first, for checkpoints.
    var storage: (answers: ChunkedArray<Stored>, expiries: ChunkedArray<Expiry>, firstPosition: UInt64) {
        (answers, expiries, firstPosition)
    }

    /// Rebuilds a table from checkpointed entries; the index is built anew.
    init(answers: ChunkedArray<Stored>, expiries: ChunkedArray<Expiry>, firstPosition: UInt64) {
        self.answers = answers
        self.expiries = expiries
        self.firstPosition = firstPosition
        while slots.count < 2 * max(1, expiries.count) { slots = ChunkedArray<Slot>(repeating: Slot(), count: slots.count * 2) }
        for (index, expiry) in expiries.enumerated() {
            insert(Slot(tag: expiry.key.low, positionPlusOne: firstPosition + UInt64(index) + 1))
        }
    }

    init() {}

    mutating func reserveCapacity(_ count: Int) {
        answers.reserveCapacity(count)
        expiries.reserveCapacity(count)
        var size = slots.count
        while size < 2 * count { size *= 2 }
        if size > slots.count { rebuildIndex(slotCount: size) }
    }

    func lookup(_ key: Key, fingerprint: UInt64) -> Lookup {
        guard let slot = find(key) else { return .new }
        let index = Int(slots[slot].positionPlusOne - 1 - firstPosition)
        return answers[index].fingerprint == fingerprint ? .replay(answers[index].answer) : .conflict
    }

    /// Stores an answer for a key that `lookup` reported as new, decided at `decided`.
    mutating func remember(_ key: Key, fingerprint: UInt64, answer: Answer, decidedAt decided: Instant) {
        if 2 * (expiries.count + 1) > slots.count { grow() }
        let position = firstPosition + UInt64(expiries.count)
        insert(Slot(tag: key.low, positionPlusOne: position + 1))
        answers.append(Stored(fingerprint: fingerprint, answer: answer))
        expiries.append(Expiry(key: key, at: decided))
    }

    /// Forgets the keys decided at or before `instant`.
    mutating func forget(decidedThrough instant: Instant) {
        while let first = expiries.first, first.at <= instant {
            forgetFirst(first.key)
        }
    }

    /// Whether `key` is remembered, under any fingerprint.
    func contains(_ key: Key) -> Bool { find(key) != nil }

    /// Forgets the oldest keys up to and including `key` (which should be remembered). Keys go
    /// oldest first, so a key that was forgotten took every older one with it.
    /// Returns how many it forgot.
    mutating func forget(through key: Key) -> Int {
        var forgotten = 0
        while let first = expiries.first {
            let last = first.key == key
            forgetFirst(first.key)
            forgotten += 1
            if last { break }
        }
        return forgotten
    }

    /// Every entry, oldest first.
    var entries: [ArchivedKey] {
        zip(expiries, answers).map { expiry, stored in
            ArchivedKey(low: expiry.key.low, high: expiry.key.high, fingerprint: stored.fingerprint, decidedAt: expiry.at, answer: stored.answer)
        }
    }

    /// Takes the oldest key out of the table, with all a retry needs.
    mutating func removeOldest() -> ArchivedKey? {
        guard let first = expiries.first, let stored = answers.first else { return nil }
        forgetFirst(first.key)
        return ArchivedKey(low: first.key.low, high: first.key.high, fingerprint: stored.fingerprint, decidedAt: first.at, answer: stored.answer)
    }

    // MARK: - The index

    private var mask: Int { slots.count - 1 }

    private func ideal(_ tag: UInt64) -> Int {
        Int(truncatingIfNeeded: FastHash.mix(tag ^ FastHash.seed, 0x9E37_79B9_7F4A_7C15)) & mask
    }

    private func find(_ key: Key) -> Int? {
        var index = ideal(key.low)
        while slots[index].positionPlusOne != 0 {
            if slots[index].tag == key.low {
                let position = Int(slots[index].positionPlusOne - 1 - firstPosition)
                if expiries[position].key.high == key.high { return index }
            }
            index = (index + 1) & mask
        }
        return nil
    }

    private mutating func insert(_ slot: Slot) {
        var index = ideal(slot.tag)
        while slots[index].positionPlusOne != 0 { index = (index + 1) & mask }
        slots[index] = slot
    }

    private mutating func forgetFirst(_ key: Key) {
        // The oldest entry's slot is the one in its probe chain holding its position.
        var index = ideal(key.low)
        while slots[index].positionPlusOne != firstPosition + 1 {
            precondition(slots[index].positionPlusOne != 0, "the oldest idempotency entry is missing from the index")
            index = (index + 1) & mask
        }
        removeSlot(at: index)
        answers.removeFirst(1)
        expiries.removeFirst(1)
        firstPosition += 1
    }

    /// Linear-probing deletion without tombstones: later entries of the same run move back
    /// into the hole unless their ideal slot lies after it.
    private mutating func removeSlot(at start: Int) {
        var hole = start
        var index = (start + 1) & mask
        while slots[index].positionPlusOne != 0 {
            let home = ideal(slots[index].tag)
            let homeIsAfterHole = hole <= index ? (home > hole && home <= index) : (home > hole || home <= index)
            if !homeIsAfterHole {
                slots[hole] = slots[index]
                hole = index
            }
            index = (index + 1) & mask
        }
        slots[hole] = Slot()
    }

    private mutating func grow() {
        rebuildIndex(slotCount: slots.count * 2)
    }

    private mutating func rebuildIndex(slotCount: Int) {
        let old = slots
        slots = ChunkedArray<Slot>(repeating: Slot(), count: slotCount)
        for slot in old where slot.positionPlusOne != 0 { insert(slot) }
    }
}

extension Command {
    /// A 64-bit fingerprint of every field, so a retry can be told from a different request
    /// under the same key without keeping the request. The gate commands, which are most of
    /// the traffic, are hashed field by field; admin commands use the standard hasher.
    var fingerprint: UInt64 {
        fingerprint(accountHash: nil)
    }

    /// The fingerprint, given the account's stable hash (`FastHash.hash(account, seed:
    /// stableSeed)`) if the caller has it: the gate commands start with it.
    func fingerprint(accountHash: UInt64?) -> UInt64 {
        switch self {
        case .reserve(let reserve):
            var hasher = FastHasher(tag: 1)
            hasher.add(reserve.request, accountHash: accountHash)
            hasher.add(reserve.ttlMicroseconds)
            return hasher.state
        case .spend(let spend):
            var hasher = FastHasher(tag: 2)
            hasher.add(spend.request, accountHash: accountHash)
            return hasher.state
        case .commit(let commit):
            var hasher = FastHasher(tag: 3)
            hasher.add(commit.hold, accountHash: accountHash)
            switch commit.amount {
            case .held: hasher.add(0 as UInt64)
            case .quantity(let quantity): hasher.add(1 as UInt64); hasher.add(quantity)
            case .credits(let credits): hasher.add(2 as UInt64); hasher.add(credits)
            }
            hasher.add(commit.isFinal ? 1 as UInt64 : 0)
            return hasher.state
        case .release(let reference):
            var hasher = FastHasher(tag: 4)
            hasher.add(reference, accountHash: accountHash)
            return hasher.state
        case .extend(let extend):
            var hasher = FastHasher(tag: 5)
            hasher.add(extend.hold, accountHash: accountHash)
            hasher.add(extend.ttlMicroseconds)
            return hasher.state
        case .createAccount(let create):
            var hasher = FastHasher(tag: 6)
            hasher.add(create.account)
            hasher.add(create.parent)
            hasher.add(create.overage)
            hasher.add(create.period)
            return hasher.state
        case .setParent(let account, let parent):
            var hasher = FastHasher(tag: 7)
            hasher.add(account)
            hasher.add(parent)
            return hasher.state
        case .setOverage(let account, let policy):
            var hasher = FastHasher(tag: 8)
            hasher.add(account)
            hasher.add(policy)
            return hasher.state
        case .setPeriod(let account, let period):
            var hasher = FastHasher(tag: 9)
            hasher.add(account)
            hasher.add(period)
            return hasher.state
        case .setAccountCap(let account, let limit):
            return FastHasher.fingerprint(10, [account], limit)
        case .addMember(let account, let member):
            return FastHasher.fingerprint(11, [account, member])
        case .removeMember(let account, let member):
            return FastHasher.fingerprint(12, [account, member])
        case .setMemberCap(let account, let member, let limit):
            return FastHasher.fingerprint(13, [account, member], limit)
        case .createGroup(let account, let group):
            return FastHasher.fingerprint(14, [account, group])
        case .deleteGroup(let account, let group):
            return FastHasher.fingerprint(15, [account, group])
        case .setGroupCap(let account, let group, let limit):
            return FastHasher.fingerprint(16, [account, group], limit)
        case .addToGroup(let account, let group, let member):
            return FastHasher.fingerprint(17, [account, group, member])
        case .removeFromGroup(let account, let group, let member):
            return FastHasher.fingerprint(18, [account, group, member])
        case .addGrant(let grant):
            var hasher = FastHasher(tag: 19)
            hasher.add(grant.account)
            switch grant.scope {
            case .pool: hasher.add(0 as UInt64)
            case .member(let member): hasher.add(1 as UInt64); hasher.add(member)
            }
            // Only a scoped grant adds its products, so an unscoped grant's fingerprint is what it was.
            if !grant.products.isEmpty {
                hasher.add(UInt64(grant.products.count))
                for product in grant.products { hasher.add(product) }
            }
            hasher.add(grant.amount)
            hasher.add(Int64(grant.priority))
            hasher.add(grant.effectiveAt.microsecondsSinceEpoch)
            hasher.add(grant.expiresAt.microsecondsSinceEpoch)
            hasher.add(UInt64(grant.source.rawValue))
            return hasher.state
        case .voidGrant(let account, let grant):
            var hasher = FastHasher(tag: 20)
            hasher.add(account)
            hasher.add(grant)
            return hasher.state
        case .setRate(let product, let rate, let effectiveAt):
            var hasher = FastHasher(tag: 21)
            hasher.add(product)
            hasher.add(rate)
            hasher.add(effectiveAt.microsecondsSinceEpoch)
            return hasher.state
        case .setAccountRate(let account, let product, let rate, let effectiveAt):
            var hasher = FastHasher(tag: 22)
            hasher.add(account)
            hasher.add(product)
            hasher.add(optional: rate)
            hasher.add(effectiveAt.microsecondsSinceEpoch)
            return hasher.state
        case .setSubscription(let account, let terms):
            var hasher = FastHasher(tag: 23)
            hasher.add(account)
            hasher.add(terms)
            return hasher.state
        case .setSeats(let account, let seats, let effectiveAt):
            var hasher = FastHasher(tag: 24)
            hasher.add(account)
            hasher.add(seats)
            hasher.add(effectiveAt.microsecondsSinceEpoch)
            return hasher.state
        case .setAlert(let account, let rule):
            var hasher = FastHasher(tag: 25)
            hasher.add(account)
            hasher.add(rule)
            return hasher.state
        case .removeAlert(let account, let id):
            return FastHasher.fingerprint(26, [account, id])
        case .setAutoRecharge(let account, let rule):
            var hasher = FastHasher(tag: 27)
            hasher.add(account)
            hasher.add(rule)
            return hasher.state
        case .definePlan(let plan):
            var hasher = FastHasher(tag: 28)
            hasher.add(plan.name)
            hasher.add(plan.overage)
            hasher.add(plan.subscription)
            hasher.add(UInt64(plan.grants.count))
            for grant in plan.grants {
                hasher.add(grant.amount)
                hasher.add(Int64(grant.priority))
                hasher.add(UInt64(grant.source.rawValue))
                hasher.add(optional: grant.lifetimeMicroseconds)
            }
            hasher.add(UInt64(plan.alerts.count))
            for alert in plan.alerts { hasher.add(alert) }
            hasher.add(plan.autoRecharge)
            return hasher.state
        case .provision(let provision):
            var hasher = FastHasher(tag: 29)
            hasher.add(provision.account)
            hasher.add(provision.plan)
            hasher.add(provision.parent)
            hasher.add(provision.seats)
            hasher.add(UInt64(provision.members.count))
            for member in provision.members { hasher.add(member) }
            return hasher.state
        case .moveFamilyOut(let account, let destination):
            return FastHasher.fingerprint(30, [account, destination])
        case .moveFamilyIn(let account, let transfer):
            var hasher = FastHasher(tag: 31)
            hasher.add(account)
            let digest = transfer.withUnsafeBufferPointer { FastHash.stablePair($0) }
            hasher.add(digest.first)
            hasher.add(digest.second)
            hasher.add(UInt64(transfer.count))
            return hasher.state
        case .setCap(let set):
            var hasher = FastHasher(tag: 32)
            hasher.add(set.account)
            switch set.target {
            case .account: hasher.add(0 as UInt64)
            case .member(let member): hasher.add(1 as UInt64); hasher.add(member)
            case .group(let group): hasher.add(2 as UInt64); hasher.add(group)
            }
            hasher.add(UInt64(set.window.rawValue))
            hasher.add(UInt64(set.mode.rawValue))
            hasher.add(optional: set.limit)
            return hasher.state
        case .reserveMetered(let request, let ttl):
            var hasher = FastHasher(tag: 34)
            hasher.add(request)
            hasher.add(ttl)
            return hasher.state
        case .spendMetered(let request):
            var hasher = FastHasher(tag: 35)
            hasher.add(request)
            return hasher.state
        case .commitMetered(let hold, let dimensions, let isFinal):
            var hasher = FastHasher(tag: 36)
            hasher.add(hold.account)
            hasher.add(hold.hold)
            hasher.add(dimensions)
            hasher.add(isFinal ? 1 as UInt64 : 0)
            return hasher.state
        case .setMeteredRate(let product, let dimension, let rate, let effectiveAt):
            var hasher = FastHasher(tag: 37)
            hasher.add(product)
            hasher.add(dimension)
            hasher.add(rate.credits)
            hasher.add(rate.per)
            hasher.add(effectiveAt.microsecondsSinceEpoch)
            return hasher.state
        case .setConcurrency(let account, let target, let limit):
            var hasher = FastHasher(tag: 33)
            hasher.add(account)
            switch target {
            case .account: hasher.add(0 as UInt64)
            case .eachMember: hasher.add(1 as UInt64)
            case .member(let member): hasher.add(2 as UInt64); hasher.add(member)
            }
            hasher.add(optional: limit)
            return hasher.state
        }
    }
}

extension FastHasher {
    mutating func add(_ request: MeteredRequest) {
        add(request.account)
        add(request.member)
        add(request.product)
        add(request.dimensions)
    }

    mutating func add(_ dimensions: [DimensionQuantity]) {
        add(UInt64(dimensions.count))
        for entry in dimensions {
            add(entry.dimension)
            add(entry.quantity)
        }
    }

    mutating func add(_ terms: Subscription?) {
        guard let terms else { return add(0 as UInt64) }
        add(1 as UInt64)
        add(UInt64(terms.scope.rawValue))
        add(terms.creditsPerSeat)
        add(terms.prorate ? 1 as UInt64 : 0)
        add(UInt64(terms.removal.rawValue))
        add(terms.rolloverCap)
        add(Int64(terms.priority))
    }

    mutating func add(_ rule: AlertRule) {
        add(rule.id)
        add(rule.member)
        switch rule.threshold {
        case .credits(let credits): add(0 as UInt64); add(credits)
        case .percentOfAllotment(let percent): add(1 as UInt64); add(percent)
        case .depleted: add(2 as UInt64)
        }
    }

    mutating func add(_ rule: AutoRecharge?) {
        guard let rule else { return add(0 as UInt64) }
        add(1 as UInt64)
        add(rule.below)
        add(rule.amount)
        add(optional: rule.upTo)
        add(rule.maxPerPeriod)
        add(Int64(rule.priority))
        add(optional: rule.expiresAfterMicroseconds)
    }
}

extension FastHasher {
    static func fingerprint(_ tag: UInt64, _ strings: [String], _ limit: Credits?? = nil) -> UInt64 {
        var hasher = FastHasher(tag: tag)
        for string in strings { hasher.add(string) }
        if let limit { hasher.add(optional: limit) }
        return hasher.state
    }

    mutating func add(optional value: Int64?) {
        if let value { add(1 as UInt64); add(value) } else { add(0 as UInt64) }
    }

    mutating func add(_ policy: OveragePolicy) {
        switch policy {
        case .deny: add(0 as UInt64)
        case .overdraft(let limit): add(1 as UInt64); add(limit)
        case .finish(let percent): add(2 as UInt64); add(percent)
        }
    }

    mutating func add(_ period: BillingPeriod?) {
        switch period {
        case nil: add(0 as UInt64)
        case .monthly(let anchor)?: add(1 as UInt64); add(anchor.microsecondsSinceEpoch)
        case .fixed(let anchor, let length)?: add(2 as UInt64); add(anchor.microsecondsSinceEpoch); add(length)
        }
    }

    mutating func add(_ request: DecisionRequest, accountHash: UInt64?) {
        add(account: request.account, accountHash)
        add(request.member)
        add(request.product)
        add(request.quantity)
    }

    mutating func add(_ reference: HoldReference, accountHash: UInt64?) {
        add(account: reference.account, accountHash)
        add(reference.hold)
    }

    private mutating func add(account: String, _ stableHash: UInt64?) {
        if let stableHash { add(stableHash: stableHash, of: account) } else { add(account) }
    }
}

/// How recently resolved holds ended, bounded in count and time; the oldest go first.
struct ResolvedHolds: Hashable, Sendable {
    struct Resolved: Hashable, Sendable {
        var account: Int32
        var resolution: HoldResolution
    }

    private(set) var resolutions = ShardedTable<HoldKey, Resolved>()
    private var order: ChunkedArray<Expiry> = []

    /// The exact contents, for checkpoints.
    var storage: (resolutions: ShardedTable<HoldKey, Resolved>, order: ChunkedArray<Expiry>) {
        get { (resolutions, order) }
        set { (resolutions, order) = newValue }
    }

    struct Expiry: Hashable, Sendable {
        var hold: HoldID
        var at: Instant
    }

    subscript(hold: HoldID) -> Resolved? { resolutions[HoldKey(hold)] }

    mutating func remember(_ hold: HoldID, account: Int32, _ resolution: HoldResolution, until expiry: Instant, capacity: Int) {
        guard capacity > 0 else { return }
        while resolutions.count >= capacity, let oldest = order.popFirst() {
            resolutions.removeValue(forKey: HoldKey(oldest.hold))
        }
        resolutions[HoldKey(hold)] = Resolved(account: account, resolution: resolution)
        order.append(Expiry(hold: hold, at: expiry))
    }

    /// The remembered holds of some accounts, oldest first: `accounts` maps each account's
    /// slot here to the slot it is given.
    func entries(of accounts: [Int32: Int32]) -> [(hold: HoldID, resolved: Resolved, until: Instant)] {
        order.compactMap { expiry in
            guard let resolved = resolutions[HoldKey(expiry.hold)], let account = accounts[resolved.account] else { return nil }
            return (expiry.hold, Resolved(account: account, resolution: resolved.resolution), expiry.at)
        }
    }

    /// Adds entries (oldest first) where their expiries put them, replacing any of the same
    /// holds; then the oldest go until `capacity` are left.
    mutating func merge(_ entries: [(hold: HoldID, resolved: Resolved, until: Instant)], capacity: Int) {
        guard !entries.isEmpty else { return }
        let incoming = Set(entries.map(\.hold))
        var merged = ChunkedArray<Expiry>()
        var next = 0
        for expiry in order where !incoming.contains(expiry.hold) {
            while next < entries.count, entries[next].until <= expiry.at {
                merged.append(Expiry(hold: entries[next].hold, at: entries[next].until))
                next += 1
            }
            merged.append(expiry)
        }
        for entry in entries[next...] { merged.append(Expiry(hold: entry.hold, at: entry.until)) }
        for entry in entries { resolutions[HoldKey(entry.hold)] = entry.resolved }
        order = merged
        while resolutions.count > max(0, capacity), let oldest = order.popFirst() {
            resolutions.removeValue(forKey: HoldKey(oldest.hold))
        }
    }

    mutating func forget(through instant: Instant) {
        while let first = order.first, first.at <= instant {
            order.removeFirst(1)
            resolutions.removeValue(forKey: HoldKey(first.hold))
        }
    }
}
