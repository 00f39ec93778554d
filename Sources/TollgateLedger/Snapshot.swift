/// A full copy of the ledger as bytes, for checkpoints: `snapshot()` writes one and
/// `init(snapshot:limits:)` reads it back into an equal ledger. Tables that can be rebuilt
/// (the id indexes, the idempotency index) are rebuilt rather than stored. Big-endian, with a
/// magic and a version; every read is bounded and a bad snapshot is a `SnapshotError`.
public struct SnapshotError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

struct SnapshotWriter {
    var bytes: [UInt8] = []
    /// The layout version of the records written: 6 adds window caps and open-hold bounds.
    var format = Ledger.snapshotFormat

    mutating func integer<Value: FixedWidthInteger>(_ value: Value) {
        withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) }
    }

    mutating func int(_ value: Int) { integer(Int64(value)) }
    mutating func bool(_ value: Bool) { integer(UInt8(value ? 1 : 0)) }
    mutating func instant(_ value: Instant) { integer(value.microsecondsSinceEpoch) }

    mutating func string(_ value: String) {
        int(value.utf8.count)
        bytes.append(contentsOf: value.utf8)
    }

    mutating func optional<Value>(_ value: Value?, _ write: (inout SnapshotWriter, Value) -> Void) {
        bool(value != nil)
        if let value { write(&self, value) }
    }

    mutating func array<Value>(_ values: some Collection<Value>, _ write: (inout SnapshotWriter, Value) -> Void) {
        int(values.count)
        for value in values { write(&self, value) }
    }
}

struct SnapshotReader {
    let bytes: [UInt8]
    var position = 0
    /// The layout version of the records read (see `SnapshotWriter.format`).
    var format = Ledger.snapshotFormat

    mutating func integer<Value: FixedWidthInteger>(_ type: Value.Type = Value.self) throws -> Value {
        let size = MemoryLayout<Value>.size
        guard position + size <= bytes.count else { throw SnapshotError(description: "snapshot cut short at byte \(position)") }
        var value = Value.zero
        for index in 0..<size { value = value << 8 | Value(bytes[position + index]) }
        position += size
        return value
    }

    mutating func int() throws -> Int {
        let value = try integer(Int64.self)
        guard value >= 0, value <= Int64(bytes.count) * 8 + 1_000_000_000_000 else { throw SnapshotError(description: "implausible count \(value)") }
        return Int(value)
    }

    mutating func count() throws -> Int {
        let value = try int()
        guard value <= bytes.count - position else { throw SnapshotError(description: "count \(value) beyond the snapshot at byte \(position)") }
        return value
    }

    mutating func bool() throws -> Bool {
        switch try integer(UInt8.self) {
        case 0: return false
        case 1: return true
        default: throw SnapshotError(description: "bad flag at byte \(position - 1)")
        }
    }

    mutating func instant() throws -> Instant { Instant(microsecondsSinceEpoch: try integer()) }

    mutating func string() throws -> String {
        let length = try count()
        defer { position += length }
        return String(decoding: bytes[position..<position + length], as: UTF8.self)
    }

    mutating func optional<Value>(_ read: (inout SnapshotReader) throws -> Value) throws -> Value? {
        try bool() ? try read(&self) : nil
    }

    mutating func array<Value>(_ read: (inout SnapshotReader) throws -> Value) throws -> [Value] {
        let count = try count()
        var values: [Value] = []
        values.reserveCapacity(count)
        for _ in 0..<count { values.append(try read(&self)) }
        return values
    }
}

extension Ledger {
    /// "TGL2": adds subscriptions. A "TGL1" snapshot (before them) is still read.
    /// Version 6: accounts, members and groups carry their window caps and open-hold bounds
    /// (Ledger+Windows.swift).
    static let snapshotMagic: UInt32 = 0x5447_4C36
    static let snapshotFormat = 6
    /// Version 5: the families moved out (Ledger+Move.swift), at the end.
    static let snapshotMagicVersion5: UInt32 = 0x5447_4C35
    /// Version 4: a hold carries the groups it counts against (its member's when it was made).
    static let snapshotMagicVersion4: UInt32 = 0x5447_4C34
    /// Version 3: idempotency entries carry the instant their request was decided.
    static let snapshotMagicVersion3: UInt32 = 0x5447_4C33
    /// Version 2: idempotency entries carry the instant they expire at.
    static let snapshotMagicVersion2: UInt32 = 0x5447_4C32
    static let snapshotMagicVersion1: UInt32 = 0x5447_4C31

    /// The whole state as bytes.
    public func snapshot() -> [UInt8] {
        snapshot(asVersion: Ledger.snapshotFormat)
    }

    /// The snapshot as an older version (3 to 6) wrote it, leaving out what that version did
    /// not have (a hold's groups before 4, the families moved out before 5, window caps and
    /// open-hold bounds before 6), so that tests can check how one is read.
    func snapshot(asVersion version: Int) -> [UInt8] {
        let magics = [3: Ledger.snapshotMagicVersion3, 4: Ledger.snapshotMagicVersion4, 5: Ledger.snapshotMagicVersion5]
        var w = SnapshotWriter(format: version)
        w.integer(magics[version] ?? Ledger.snapshotMagic)
        w.instant(clock)
        w.array(accounts) { w, account in w.write(account) }
        w.array(members) { w, member in w.write(member) }
        w.array(freeMemberSlots) { $0.integer($1) }
        w.array(groups) { w, group in w.write(group) }
        w.array(grants) { w, grant in w.write(grant) }
        w.array(freeGrantSlots) { $0.integer($1) }
        w.integer(nextGrantID)
        w.array(holds.values.sorted { $0.id < $1.id }) { w, hold in w.write(hold, withGroups: version >= 4) }
        w.integer(nextHoldID)
        w.array(rates.sorted { $0.key.string < $1.key.string }) { w, rate in
            w.string(rate.key.string)
            w.write(rate.value)
        }
        let events = events.storage
        w.array(events.heap) { w, event in
            w.instant(event.at)
            w.integer(event.sequence)
            switch event.kind {
            case .holdDeadline(let id):
                w.integer(UInt8(0))
                w.integer(id)
            case .grantEffective(let slot, let grant):
                w.integer(UInt8(1))
                w.integer(slot)
                w.integer(grant)
            case .grantExpiry(let slot, let grant):
                w.integer(UInt8(2))
                w.integer(slot)
                w.integer(grant)
            case .periodBoundary(let account, let end):
                w.integer(UInt8(3))
                w.integer(account)
                w.instant(end)
            case .seatChange(let account, let at):
                w.integer(UInt8(4))
                w.integer(account)
                w.instant(at)
            }
        }
        w.integer(events.nextSequence)
        w.int(events.compactionThreshold)
        let idempotency = idempotency.storage
        w.integer(idempotency.firstPosition)
        w.array(idempotency.expiries) { w, expiry in
            w.integer(expiry.key.low)
            w.integer(expiry.key.high)
            w.instant(expiry.at)
        }
        w.array(idempotency.answers) { w, stored in
            w.integer(stored.fingerprint)
            w.write(stored.answer)
        }
        let resolved = resolvedHolds.storage
        w.array(resolved.resolutions.entries.sorted { $0.key.id < $1.key.id }) { w, entry in
            w.integer(entry.key.id)
            w.integer(entry.value.account)
            w.integer(entry.value.resolution.rawValue)
        }
        w.array(resolved.order) { w, expiry in
            w.integer(expiry.hold)
            w.instant(expiry.at)
        }
        w.int(idempotencyKeysForgottenEarly)
        for value in [retiredTotals.granted, retiredTotals.available, retiredTotals.held, retiredTotals.consumed, retiredTotals.expired, retiredTotals.voided] {
            w.integer(value)
        }
        w.array(subscriptions.sorted { $0.key < $1.key }) { w, entry in
            w.integer(entry.key)
            w.write(entry.value)
        }
        w.integer(subscriptionCreditsIssued)
        w.write(alerts: alerts)
        w.write(recharges: recharges)
        w.integer(nextEventSequence)
        w.integer(rechargeCreditsIssued)
        w.array(ledgerBurn.storage) { $0.integer($1) }
        for burn in [accountBurn, memberBurn] {
            w.int(burn.count)
            w.array(burn.enumerated().filter { !$0.element.isEmpty }) { w, entry in
                w.integer(Int32(entry.offset))
                w.array(entry.element.storage) { $0.integer($1) }
            }
        }
        w.array(plans.values.sorted { $0.name < $1.name }) { w, plan in
            w.string(plan.name)
            w.write(plan.overage)
            w.optional(plan.subscription) { $0.write($1) }
            w.array(plan.grants) { w, grant in
                w.integer(grant.amount)
                w.integer(grant.priority)
                w.integer(grant.source.rawValue)
                w.optional(grant.lifetimeMicroseconds) { $0.integer($1) }
            }
            w.array(plan.alerts) { w, alert in w.write(alert) }
            w.optional(plan.autoRecharge) { w, rule in w.write(rule) }
        }
        if version >= 5 {
            w.array(movedOut.sorted { $0.key < $1.key }) { w, entry in
                w.integer(entry.key)
                w.string(entry.value.destination)
                w.instant(entry.value.at)
            }
        }
        if version >= 6 {
            w.write(grantProducts: grantProducts)
            w.write(holdRates: holdRates)
            w.array(meteredRates.sorted { $0.key.string < $1.key.string }) { w, product in
                w.string(product.key.string)
                w.array(product.value.sorted { $0.key < $1.key }) { w, dimension in
                    w.string(dimension.key)
                    w.array(dimension.value.versions) { w, version in
                        w.instant(version.effectiveAt)
                        w.write(version.value)
                    }
                }
            }
        }
        return w.bytes
    }

    /// A ledger equal to the one that wrote `snapshot`, under `limits`.
    public init(snapshot bytes: [UInt8], limits: LedgerLimits = LedgerLimits()) throws {
        var r = SnapshotReader(bytes: bytes)
        let magic = try r.integer(UInt32.self)
        let known = [
            Ledger.snapshotMagic, Ledger.snapshotMagicVersion5, Ledger.snapshotMagicVersion4, Ledger.snapshotMagicVersion3, Ledger.snapshotMagicVersion2,
            Ledger.snapshotMagicVersion1,
        ]
        guard let version = known.firstIndex(of: magic).map({ Ledger.snapshotFormat - $0 }) else {
            throw SnapshotError(description: "not a ledger snapshot")
        }
        r.format = version
        self.init(limits: limits, startingAt: try r.instant())
        accounts = ChunkedArray(try r.array { try $0.readAccount() })
        members = ChunkedArray(try r.array { try $0.readMember() })
        freeMemberSlots = try r.array { try $0.integer(Int32.self) }
        groups = ChunkedArray(try r.array { try $0.readGroup() })
        grants = ChunkedArray(try r.array { try $0.readGrant() })
        freeGrantSlots = try r.array { try $0.integer(Int32.self) }
        nextGrantID = try r.integer()
        let holdsCarryGroups = version >= 4
        for var hold in try r.array({ try $0.readHold(withGroups: holdsCarryGroups) }) {
            guard hold.account >= 0, Int(hold.account) < accounts.count else { throw SnapshotError(description: "hold \(hold.id) of an unknown account slot") }
            if hold.member != noSlot {
                guard hold.member >= 0, Int(hold.member) < members.count else { throw SnapshotError(description: "hold \(hold.id) of an unknown member slot") }
                // Before version 4 a group counted what its members held: the same as the groups
                // the holds' members are in now.
                if !holdsCarryGroups { hold.groups = members[Int(hold.member)].groups }
            }
            for group in hold.groups where group < 0 || Int(group) >= groups.count || groups[Int(group)].account != hold.account {
                throw SnapshotError(description: "hold \(hold.id) counts against an unknown group slot \(group)")
            }
            holds[HoldKey(hold.id)] = hold
        }
        nextHoldID = try r.integer()
        for (product, history) in try r.array({ r in (try r.string(), try r.readRates()) }) { rates[HashedString(product)] = history }
        let heap: [EventQueue.Event] = try r.array { r in
            let at = try r.instant()
            let sequence = try r.integer(UInt64.self)
            let kind: EventQueue.Kind
            switch try r.integer(UInt8.self) {
            case 0: kind = .holdDeadline(try r.integer())
            case 1: kind = .grantEffective(slot: try r.integer(), grant: try r.integer())
            case 2: kind = .grantExpiry(slot: try r.integer(), grant: try r.integer())
            case 3: kind = .periodBoundary(account: try r.integer(), end: try r.instant())
            case 4: kind = .seatChange(account: try r.integer(), at: try r.instant())
            default: throw SnapshotError(description: "unknown event kind")
            }
            return EventQueue.Event(at: at, sequence: sequence, kind: kind)
        }
        events.storage = (heap, try r.integer(), try r.int())
        let firstPosition = try r.integer(UInt64.self)
        // Before version 3 an entry carried its expiry: taken as decided a retention before.
        let expiryShift = holdsCarryGroups || magic == Ledger.snapshotMagicVersion3 ? 0 : -limits.idempotencyRetentionMicroseconds
        let expiries = try r.array { r in
            IdempotencyTable.Expiry(key: IdempotencyTable.Key(low: try r.integer(), high: try r.integer()), at: try r.instant().adding(microseconds: expiryShift))
        }
        let answers = try r.array { r in IdempotencyTable.Stored(fingerprint: try r.integer(), answer: try r.readAnswer()) }
        guard answers.count == expiries.count else { throw SnapshotError(description: "idempotency entries do not match") }
        idempotency = IdempotencyTable(answers: ChunkedArray(answers), expiries: ChunkedArray(expiries), firstPosition: firstPosition)
        var resolutions = ShardedTable<HoldKey, ResolvedHolds.Resolved>()
        for (id, account, raw) in try r.array({ r in (try r.integer(UInt64.self), try r.integer(Int32.self), try r.integer(UInt8.self)) }) {
            guard let resolution = HoldResolution(rawValue: raw) else { throw SnapshotError(description: "unknown hold resolution") }
            resolutions[HoldKey(id)] = ResolvedHolds.Resolved(account: account, resolution: resolution)
        }
        let order = try r.array { r in ResolvedHolds.Expiry(hold: try r.integer(), at: try r.instant()) }
        resolvedHolds.storage = (resolutions, ChunkedArray(order))
        idempotencyKeysForgottenEarly = try r.int()
        retiredTotals.granted = try r.integer()
        retiredTotals.available = try r.integer()
        retiredTotals.held = try r.integer()
        retiredTotals.consumed = try r.integer()
        retiredTotals.expired = try r.integer()
        retiredTotals.voided = try r.integer()
        if magic != Ledger.snapshotMagicVersion1 {
            for (slot, state) in try r.array({ r in (try r.integer(Int32.self), try r.readSubscription()) }) {
                guard slot >= 0, Int(slot) < accounts.count else { throw SnapshotError(description: "subscription of an unknown account slot \(slot)") }
                subscriptions[slot] = state
            }
            subscriptionCreditsIssued = try r.integer()
            for (slot, states) in try r.readAlerts() {
                guard slot >= 0, Int(slot) < accounts.count else { throw SnapshotError(description: "alerts of an unknown account slot \(slot)") }
                alerts[slot] = states
            }
            for (slot, state) in try r.readRecharges() {
                guard slot >= 0, Int(slot) < accounts.count else { throw SnapshotError(description: "recharge of an unknown account slot \(slot)") }
                recharges[slot] = state
            }
            nextEventSequence = try r.integer()
            rechargeCreditsIssued = try r.integer()
            let ledgerCells = try r.array { try $0.integer(Int64.self) }
            guard ledgerCells.count == 0 || ledgerCells.count == 4 * BurnWindow.buckets else { throw SnapshotError(description: "bad burn window") }
            ledgerBurn.storage = ledgerCells
            for which in 0..<2 {
                let count = try r.int()
                guard count <= (which == 0 ? accounts.count : members.count) else { throw SnapshotError(description: "burn table longer than its table") }
                if which == 0 { accountBurn = ChunkedArray(repeating: BurnWindow(), count: count) } else { memberBurn = ChunkedArray(repeating: BurnWindow(), count: count) }
                for (slot, window) in try r.array({ r -> (Int32, BurnWindow) in
                    let slot = try r.integer(Int32.self)
                    var window = BurnWindow()
                    let cells = try r.array { try $0.integer(Int64.self) }
                    guard cells.count == 0 || cells.count == 4 * BurnWindow.buckets else { throw SnapshotError(description: "bad burn window") }
                    window.storage = cells
                    return (slot, window)
                }) {
                    guard slot >= 0, Int(slot) < count else { throw SnapshotError(description: "burn window of an unknown slot") }
                    if which == 0 { accountBurn[Int(slot)] = window } else { memberBurn[Int(slot)] = window }
                }
            }
            for plan in try r.array({ r -> Plan in
                var plan = Plan(name: try r.string(), overage: try r.readOverage())
                plan.subscription = try r.optional { try $0.readTerms() }
                plan.grants = try r.array { r in
                    let amount = try r.integer(Int64.self)
                    let priority = try r.integer(Int32.self)
                    guard let source = GrantSource(rawValue: try r.integer(UInt8.self)) else { throw SnapshotError(description: "unknown grant source") }
                    return PlanGrant(amount: amount, priority: priority, source: source, lifetimeMicroseconds: try r.optional { try $0.integer(Int64.self) })
                }
                plan.alerts = try r.array { try $0.readAlertRule() }
                plan.autoRecharge = try r.optional { try $0.readRecharge() }
                return plan
            }) {
                plans[plan.name] = plan
            }
        }
        if version >= 5 {
            for (slot, destination, at) in try r.array({ r in (try r.integer(Int32.self), try r.string(), try r.instant()) }) {
                guard slot >= 0, Int(slot) < accounts.count else { throw SnapshotError(description: "moved family of an unknown account slot \(slot)") }
                movedOut[slot] = MovedFamily(destination: destination, at: at)
            }
        }
        if version >= 6 {
            grantProducts = try r.readGrantProducts()
            holdRates = try r.readHoldRates()
            for (product, dimensions) in try r.array({ r in
                (
                    try r.string(),
                    try r.array { r in
                        (try r.string(), MeteredHistory(versions: try r.array { r in MeteredHistory.Version(effectiveAt: try r.instant(), value: try r.readMeteredRate()) }))
                    }
                )
            }) {
                meteredRates[HashedString(product)] = Dictionary(dimensions, uniquingKeysWith: { $1 })
            }
            guard holdRates.keys.allSatisfy({ holds[HoldKey($0)] != nil }) else { throw SnapshotError(description: "rates of a hold that is not open") }
            if !holdRates.isEmpty { rulesInUse.value = true }
        }
        guard r.position == bytes.count else { throw SnapshotError(description: "\(bytes.count - r.position) bytes left over") }

        // Rebuild the indexes the snapshot leaves out.
        for (slot, account) in accounts.enumerated() { accountSlots[HashedString(account.id)] = Int32(slot) }
        for (slot, member) in members.enumerated() where member.isLive {
            memberSlots[MemberKey(account: member.account, member: member.id)] = Int32(slot)
            liveMemberCount += 1
        }
        for (slot, grant) in grants.enumerated() where grant.isLive { grantSlotByID[grant.id] = Int32(slot) }
        for member in members where member.isLive {
            guard member.account >= 0, Int(member.account) < accounts.count else { throw SnapshotError(description: "member \(member.id) of an unknown account slot") }
            accounts[Int(member.account)].membersAvailable += member.available
            for group in member.groups where group < 0 || Int(group) >= groups.count || groups[Int(group)].account != member.account {
                throw SnapshotError(description: "member \(member.id) is in an unknown group slot \(group)")
            }
        }
        for slot in Set(alerts.keys).union(recharges.keys) { accounts[Int(slot)].isWatched = true }
        if let problem = rebuildScopes() { throw SnapshotError(description: problem) }
        noteLimitsInUse()
    }
}

extension SnapshotWriter {
    mutating func write(_ usage: UsageCounter) {
        integer(usage.consumed)
        integer(usage.held)
        instant(usage.windowEnd)
    }

    mutating func write(_ policy: OveragePolicy) {
        switch policy {
        case .deny: integer(UInt8(0)); integer(Int64(0))
        case .overdraft(let limit): integer(UInt8(1)); integer(limit)
        case .finish(let percent): integer(UInt8(2)); integer(percent)
        }
    }

    mutating func write(_ period: BillingPeriod) {
        switch period {
        case .monthly(let anchor): integer(UInt8(0)); instant(anchor); integer(Int64(0))
        case .fixed(let anchor, let length): integer(UInt8(1)); instant(anchor); integer(length)
        }
    }

    mutating func write(_ rates: RateHistory) {
        array(rates.versions) { w, version in
            w.instant(version.effectiveAt)
            w.optional(version.creditsPerUnit) { $0.integer($1) }
        }
    }

    mutating func write(_ terms: Subscription) {
        integer(terms.scope.rawValue)
        integer(terms.creditsPerSeat)
        bool(terms.prorate)
        integer(terms.removal.rawValue)
        integer(terms.rolloverCap)
        integer(terms.priority)
    }

    mutating func write(_ alert: AlertRule) {
        string(alert.id)
        optional(alert.member) { $0.string($1) }
        switch alert.threshold {
        case .credits(let credits):
            integer(UInt8(0))
            integer(credits)
        case .percentOfAllotment(let percent):
            integer(UInt8(1))
            integer(percent)
        case .depleted:
            integer(UInt8(2))
            integer(Int64(0))
        }
    }

    mutating func write(_ rule: AutoRecharge) {
        integer(rule.below)
        integer(rule.amount)
        optional(rule.upTo) { $0.integer($1) }
        integer(rule.maxPerPeriod)
        integer(rule.priority)
        optional(rule.expiresAfterMicroseconds) { $0.integer($1) }
    }

    mutating func write(_ state: SubscriptionState) {
        optional(state.terms) { $0.write($1) }
        optional(state.nextTerms) { w, next in w.optional(next) { $0.write($1) } }
        integer(state.seats)
        optional(state.pendingSeats) { w, pending in
            w.instant(pending.at)
            w.integer(pending.seats)
        }
        instant(state.periodStart)
        instant(state.periodEnd)
        array(state.included) { $0.integer($1) }
        array(state.seatMembers) { $0.integer($1) }
    }

    mutating func write(_ group: GroupRecord) {
        string(group.id)
        integer(group.account)
        bool(group.isLive)
        optional(group.capLimit) { $0.integer($1) }
        write(group.usage)
        int(group.memberCount)
        if format >= 6 { write(group.windows) }
    }

    mutating func write(_ rate: MeteredRate) {
        integer(rate.credits)
        integer(rate.per)
    }

    /// Each open metered hold's rates, by hold id in order.
    mutating func write(holdRates: [HoldID: [PricedDimension]]) {
        array(holdRates.sorted { $0.key < $1.key }) { w, entry in
            w.integer(entry.key)
            w.array(entry.value) { w, priced in
                w.string(priced.dimension)
                w.write(priced.rate)
            }
        }
    }

    /// Product-scoped grants' products, by grant id in order.
    mutating func write(grantProducts: [GrantID: [String]]) {
        array(grantProducts.sorted { $0.key < $1.key }) { w, entry in
            w.integer(entry.key)
            w.array(entry.value) { $0.string($1) }
        }
    }

    mutating func write(_ windows: [WindowCap]) {
        array(windows) { w, cap in
            w.integer(cap.window.rawValue)
            w.integer(cap.mode.rawValue)
            w.integer(cap.limit)
            w.write(cap.usage)
            w.bool(cap.fired)
        }
    }

    /// Each watched account's alerts, by slot in order.
    mutating func write(alerts: [Int32: [AlertState]]) {
        array(alerts.sorted { $0.key < $1.key }) { w, entry in
            w.integer(entry.key)
            w.array(entry.value) { w, state in
                w.write(state.rule)
                w.integer(state.member)
                w.bool(state.armed)
            }
        }
    }

    mutating func write(recharges: [Int32: RechargeState]) {
        array(recharges.sorted { $0.key < $1.key }) { w, entry in
            w.integer(entry.key)
            w.write(entry.value.rule)
            w.integer(entry.value.count)
            w.instant(entry.value.windowEnd)
        }
    }

    mutating func write(_ account: AccountRecord) {
        string(account.id)
        integer(account.parent)
        integer(account.childCount)
        write(account.overage)
        write(account.period)
        optional(account.capLimit) { $0.integer($1) }
        write(account.usage)
        int(account.memberCount)
        array(account.groupSlots.sorted { $0.key.string < $1.key.string }) { w, entry in
            w.string(entry.key.string)
            w.integer(entry.value)
        }
        array(account.poolOrder) { $0.integer($1) }
        integer(account.poolAvailable)
        integer(account.overdrawn)
        integer(account.overdraftHeld)
        int(account.liveGrants)
        int(account.openHolds)
        array(account.rateOverrides.sorted { $0.key.string < $1.key.string }) { w, entry in
            w.string(entry.key.string)
            w.write(entry.value)
        }
        if format >= 6 {
            write(account.windows)
            optional(account.holdLimit) { $0.int($1) }
            optional(account.memberHoldLimit) { $0.int($1) }
        }
    }

    mutating func write(_ member: MemberRecord) {
        string(member.id)
        integer(member.account)
        bool(member.isLive)
        optional(member.capLimit) { $0.integer($1) }
        write(member.usage)
        array(member.groups) { $0.integer($1) }
        array(member.grantOrder) { $0.integer($1) }
        integer(member.available)
        int(member.openHolds)
        int(member.pendingGrants)
        if format >= 6 {
            write(member.windows)
            optional(member.holdLimit) { $0.int($1) }
        }
    }

    mutating func write(_ grant: GrantRecord) {
        integer(grant.id)
        integer(grant.account)
        integer(grant.member)
        optional(grant.memberID) { $0.string($1) }
        for value in [grant.amount, grant.available, grant.held, grant.consumed, grant.expired, grant.voided] { integer(value) }
        integer(grant.priority)
        instant(grant.effectiveAt)
        instant(grant.expiresAt)
        integer(grant.source.rawValue)
        instant(grant.createdAt)
        integer(grant.state.rawValue)
        bool(grant.isLive)
    }

    mutating func write(_ hold: HoldRecord, withGroups: Bool) {
        integer(hold.id)
        integer(hold.account)
        integer(hold.member)
        string(hold.product)
        for value in [hold.quantity, hold.creditsPerUnit, hold.original, hold.held, hold.committed] { integer(value) }
        instant(hold.createdAt)
        instant(hold.deadline)
        array(hold.draws.all) { w, draw in
            w.integer(draw.grant)
            w.integer(draw.amount)
        }
        if withGroups { array(hold.groups) { $0.integer($1) } }
    }

    mutating func write(_ headroom: Headroom) {
        for level in [headroom.member, headroom.group, headroom.account, headroom.parent] { optional(level) { $0.integer($1) } }
        optional(headroom.groupID) { $0.string($1) }
        integer(headroom.funds)
    }

    mutating func write(_ answer: Answer) {
        switch answer {
        case .decision(let decision):
            integer(UInt8(0))
            optional(decision.hold) { $0.integer($1) }
            integer(decision.cost)
            integer(decision.creditsPerUnit)
            optional(decision.deadline) { $0.instant($1) }
            write(decision.headroom)
        case .committed(let result):
            integer(UInt8(1))
            integer(result.hold)
            integer(result.committed)
            integer(result.returned)
            integer(result.stillHeld)
            write(result.headroom)
        case .released(let result):
            integer(UInt8(2))
            integer(result.hold)
            integer(result.released)
            write(result.headroom)
        case .extended(let result):
            integer(UInt8(3))
            integer(result.hold)
            instant(result.deadline)
            write(result.headroom)
        case .grantAdded(let id):
            integer(UInt8(4))
            integer(id)
        case .done:
            integer(UInt8(5))
        case .refused(let refusal):
            integer(UInt8(6))
            integer(refusal.error.code.rawValue)
            integer(refusal.error.level.rawValue)
            string(refusal.error.subject)
            optional(refusal.headroom) { $0.write($1) }
        }
    }
}

extension SnapshotReader {
    mutating func readUsage() throws -> UsageCounter {
        var usage = UsageCounter(windowEnd: .epoch)
        usage.consumed = try integer()
        usage.held = try integer()
        usage.windowEnd = try instant()
        return usage
    }

    mutating func readOverage() throws -> OveragePolicy {
        let kind = try integer(UInt8.self)
        let value = try integer(Int64.self)
        switch kind {
        case 0: return .deny
        case 1: return .overdraft(limit: value)
        case 2: return .finish(percent: value)
        default: throw SnapshotError(description: "unknown overage policy")
        }
    }

    mutating func readPeriod() throws -> BillingPeriod {
        let kind = try integer(UInt8.self)
        let anchor = try instant()
        let length = try integer(Int64.self)
        switch kind {
        case 0: return .monthly(anchor: anchor)
        case 1: return .fixed(anchor: anchor, lengthMicroseconds: length)
        default: throw SnapshotError(description: "unknown period")
        }
    }

    mutating func readRates() throws -> RateHistory {
        RateHistory(versions: try array { r in RateHistory.Version(effectiveAt: try r.instant(), creditsPerUnit: try r.optional { try $0.integer(Int64.self) }) })
    }

    mutating func readGroup() throws -> GroupRecord {
        let id = try string()
        var group = GroupRecord(id: id, account: try integer(), usage: UsageCounter(windowEnd: .epoch))
        group.isLive = try bool()
        group.capLimit = try optional { try $0.integer(Int64.self) }
        group.usage = try readUsage()
        group.memberCount = try int()
        if format >= 6 { group.windows = try readWindows() }
        return group
    }

    mutating func readMeteredRate() throws -> MeteredRate {
        let rate = MeteredRate(credits: try integer(), per: try integer())
        guard rate.credits >= 0, MeteredRate.pers.contains(rate.per) else { throw SnapshotError(description: "bad metered rate") }
        return rate
    }

    mutating func readHoldRates() throws -> [HoldID: [PricedDimension]] {
        var table: [HoldID: [PricedDimension]] = [:]
        for (id, rates) in try array({ r in (try r.integer(UInt64.self), try r.array { r in PricedDimension(dimension: try r.string(), rate: try r.readMeteredRate()) }) }) {
            guard !rates.isEmpty, rates.count <= Ledger.dimensionsMax, table.updateValue(rates, forKey: id) == nil else {
                throw SnapshotError(description: "bad rates of hold \(id)")
            }
        }
        return table
    }

    mutating func readGrantProducts() throws -> [GrantID: [String]] {
        var table: [GrantID: [String]] = [:]
        for (id, products) in try array({ r in (try r.integer(UInt64.self), try r.array { try $0.string() }) }) {
            guard table.updateValue(products, forKey: id) == nil else { throw SnapshotError(description: "products of grant \(id) twice") }
        }
        return table
    }

    mutating func readWindows() throws -> [WindowCap] {
        let windows = try array { r -> WindowCap in
            guard let window = CapWindow(rawValue: try r.integer()), let mode = CapMode(rawValue: try r.integer()) else {
                throw SnapshotError(description: "unknown cap window or mode")
            }
            return WindowCap(window: window, mode: mode, limit: try r.integer(), usage: try r.readUsage(), fired: try r.bool())
        }
        guard windows.count <= Ledger.windowCapsPerLevelMax,
            Set(windows.map { [$0.window.rawValue, $0.mode.rawValue] }).count == windows.count,
            windows.allSatisfy({ !($0.window == .period && $0.mode == .hard) })
        else { throw SnapshotError(description: "bad window caps") }
        return windows
    }

    mutating func readAlerts() throws -> [(Int32, [AlertState])] {
        try array { r in (try r.integer(Int32.self), try r.array { r in AlertState(rule: try r.readAlertRule(), member: try r.integer(), armed: try r.bool()) }) }
    }

    mutating func readRecharges() throws -> [(Int32, RechargeState)] {
        try array { r in (try r.integer(Int32.self), RechargeState(rule: try r.readRecharge(), count: try r.integer(), windowEnd: try r.instant())) }
    }

    mutating func readAccount() throws -> AccountRecord {
        let id = try string()
        let parent = try integer(Int32.self)
        let childCount = try integer(Int32.self)
        let overage = try readOverage()
        let period = try readPeriod()
        var account = AccountRecord(id: id, parent: parent, childCount: childCount, overage: overage, period: period, usage: UsageCounter(windowEnd: .epoch))
        account.capLimit = try optional { try $0.integer(Int64.self) }
        account.usage = try readUsage()
        account.memberCount = try int()
        for (name, slot) in try array({ r in (try r.string(), try r.integer(Int32.self)) }) { account.groupSlots[HashedString(name)] = slot }
        account.poolOrder = try array { try $0.integer(Int32.self) }
        account.poolAvailable = try integer()
        account.overdrawn = try integer()
        account.overdraftHeld = try integer()
        account.liveGrants = try int()
        account.openHolds = try int()
        for (product, history) in try array({ r in (try r.string(), try r.readRates()) }) { account.rateOverrides[HashedString(product)] = history }
        if format >= 6 {
            account.windows = try readWindows()
            account.holdLimit = try optional { try $0.int() }
            account.memberHoldLimit = try optional { try $0.int() }
        }
        return account
    }

    mutating func readTerms() throws -> Subscription {
        guard let scope = Subscription.Scope(rawValue: try integer(UInt8.self)) else { throw SnapshotError(description: "unknown subscription scope") }
        let perSeat = try integer(Int64.self)
        let prorate = try bool()
        guard let removal = Subscription.Removal(rawValue: try integer(UInt8.self)) else { throw SnapshotError(description: "unknown removal policy") }
        return Subscription(scope: scope, creditsPerSeat: perSeat, prorate: prorate, removal: removal, rolloverCap: try integer(), priority: try integer())
    }

    mutating func readAlertRule() throws -> AlertRule {
        let id = try string()
        let member = try optional { try $0.string() }
        let kind = try integer(UInt8.self)
        let value = try integer(Int64.self)
        switch kind {
        case 0: return AlertRule(id: id, member: member, threshold: .credits(value))
        case 1: return AlertRule(id: id, member: member, threshold: .percentOfAllotment(value))
        case 2: return AlertRule(id: id, member: member, threshold: .depleted)
        default: throw SnapshotError(description: "unknown alert threshold kind")
        }
    }

    mutating func readRecharge() throws -> AutoRecharge {
        AutoRecharge(
            below: try integer(), amount: try integer(), upTo: try optional { try $0.integer(Int64.self) }, maxPerPeriod: try integer(),
            priority: try integer(), expiresAfterMicroseconds: try optional { try $0.integer(Int64.self) })
    }

    mutating func readSubscription() throws -> SubscriptionState {
        let terms = try optional { try $0.readTerms() }
        let next: Subscription?? = try optional { r in try r.optional { try $0.readTerms() } }
        let seats = try integer(Int64.self)
        let pending = try optional { r in SubscriptionState.PendingSeats(at: try r.instant(), seats: try r.integer()) }
        var state = SubscriptionState(terms: terms, nextTerms: next, seats: seats, pendingSeats: pending, periodStart: try instant(), periodEnd: try instant())
        state.included = try array { try $0.integer(UInt64.self) }
        state.seatMembers = try array { try $0.integer(Int32.self) }
        return state
    }

    mutating func readMember() throws -> MemberRecord {
        let id = try string()
        var member = MemberRecord(id: id, account: try integer(), usage: UsageCounter(windowEnd: .epoch))
        member.isLive = try bool()
        member.capLimit = try optional { try $0.integer(Int64.self) }
        member.usage = try readUsage()
        member.groups = try array { try $0.integer(Int32.self) }
        member.grantOrder = try array { try $0.integer(Int32.self) }
        member.available = try integer()
        member.openHolds = try int()
        member.pendingGrants = try int()
        if format >= 6 {
            member.windows = try readWindows()
            member.holdLimit = try optional { try $0.int() }
        }
        return member
    }

    mutating func readGrant() throws -> GrantRecord {
        let id = try integer(UInt64.self)
        let account = try integer(Int32.self)
        let member = try integer(Int32.self)
        let memberID = try optional { try $0.string() }
        let amounts = try (0..<6).map { _ in try integer(Int64.self) }
        let priority = try integer(Int32.self)
        let effectiveAt = try instant()
        let expiresAt = try instant()
        guard let source = GrantSource(rawValue: try integer(UInt8.self)) else { throw SnapshotError(description: "unknown grant source") }
        let createdAt = try instant()
        guard let state = GrantState(rawValue: try integer(UInt8.self)) else { throw SnapshotError(description: "unknown grant state") }
        var grant = GrantRecord(
            id: id, account: account, member: member, memberID: memberID, amount: amounts[0], available: amounts[1], priority: priority,
            effectiveAt: effectiveAt, expiresAt: expiresAt, source: source, createdAt: createdAt, state: state)
        grant.held = amounts[2]
        grant.consumed = amounts[3]
        grant.expired = amounts[4]
        grant.voided = amounts[5]
        grant.isLive = try bool()
        return grant
    }

    mutating func readHold(withGroups: Bool) throws -> HoldRecord {
        let id = try integer(UInt64.self)
        let account = try integer(Int32.self)
        let member = try integer(Int32.self)
        let product = try string()
        let values = try (0..<5).map { _ in try integer(Int64.self) }
        let createdAt = try instant()
        let deadline = try instant()
        let draws = try array { r in Draw(grant: try r.integer(), amount: try r.integer()) }
        var hold = HoldRecord(
            id: id, account: account, member: member, product: product, quantity: values[0], creditsPerUnit: values[1], original: values[2],
            held: values[3], createdAt: createdAt, deadline: deadline, draws: DrawList(exactly: draws))
        hold.committed = values[4]
        if withGroups { hold.groups = try array { try $0.integer(Int32.self) } }
        return hold
    }

    mutating func readHeadroom() throws -> Headroom {
        let levels = try (0..<4).map { _ in try optional { try $0.integer(Int64.self) } }
        let groupID = try optional { try $0.string() }
        return Headroom(member: levels[0], group: levels[1], groupID: groupID, account: levels[2], parent: levels[3], funds: try integer())
    }

    mutating func readAnswer() throws -> Answer {
        switch try integer(UInt8.self) {
        case 0:
            let hold = try optional { try $0.integer(UInt64.self) }
            let cost = try integer(Int64.self)
            let rate = try integer(Int64.self)
            let deadline = try optional { try $0.instant() }
            return .decision(Decision(hold: hold, cost: cost, creditsPerUnit: rate, deadline: deadline, headroom: try readHeadroom()))
        case 1:
            return .committed(
                CommitResult(hold: try integer(), committed: try integer(), returned: try integer(), stillHeld: try integer(), headroom: try readHeadroom()))
        case 2:
            return .released(ReleaseResult(hold: try integer(), released: try integer(), headroom: try readHeadroom()))
        case 3:
            return .extended(ExtendResult(hold: try integer(), deadline: try instant(), headroom: try readHeadroom()))
        case 4:
            return .grantAdded(try integer())
        case 5:
            return .done
        case 6:
            guard let code = LedgerError.Code(rawValue: try integer()), let level = LedgerError.Level(rawValue: try integer()) else {
                throw SnapshotError(description: "unknown refusal")
            }
            let subject = try string()
            return .refused(Refusal(LedgerError(code, level: level, subject: subject), headroom: try optional { try $0.readHeadroom() }))
        default:
            throw SnapshotError(description: "unknown answer kind")
        }
    }
}
