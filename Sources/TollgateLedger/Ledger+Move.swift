/// Moving an account family — a root account and its children — from one ledger to another:
/// in a cluster, from one shard to another (docs/CLUSTER.md, "Moving a family").
///
/// Three steps, each a journaled command or a read, so every replica of either shard agrees:
/// 1. `moveFamilyOut` on the old ledger freezes the family there. From then on every command
///    for it is refused with `familyMoved` — after its idempotency key is looked up, so a
///    retry of a request decided there still gets its first answer — and its time-driven
///    events no longer fire. The frozen records stay as a tombstone.
/// 2. `familyTransfer` reads the frozen family as bytes: its accounts, members, groups, live
///    grants, open holds, subscriptions, alerts and recharges, as of the instant it was frozen.
/// 3. `moveFamilyIn` on the new ledger checks those bytes completely (every reference in
///    range, every amount within the limits, the ledger's invariants over the family alone)
///    and adds the family, keeping its hold and grant ids, so a client's open hold commits
///    on the new shard as it would have on the old one.
///
/// What stays behind: the family's idempotency keys (the old shard answers retries of them;
/// the router asks it first while they are kept), its burn-rate windows, and undelivered
/// events. What holds it resolved lately goes with it, so a late commit of one is answered
/// as it would have been.
///
/// Hold and grant ids must not collide on the new ledger: a cluster's shards allocate them
/// from disjoint spaces (`useIDSpace(tag:)`), and an import that would collide is refused.

/// A family frozen on this ledger by `moveFamilyOut`.
public struct MovedFamily: Hashable, Sendable {
    /// The shard it went to.
    public var destination: String
    /// When it was frozen: the instant its transfer describes.
    public var at: Instant
}

extension Ledger {
    /// Bits of the counter within an id space; the tag sits above them, so ids stay below
    /// 2^53 and survive JSON readers that hold numbers as doubles.
    public static let idSpaceCounterBits = 41
    public static let idSpaceTagMax: UInt16 = 4_095

    /// The id space (1...4095) of a shard, from its name: FNV-1a, reduced. Two shards of one
    /// cluster must not share one (`tollgate cluster shards` and a joining node refuse that).
    public static func idSpaceTag(forShard name: String) -> UInt16 {
        var hash: UInt32 = 0x811C_9DC5
        for byte in name.utf8 { hash = (hash ^ UInt32(byte)) &* 0x0100_0193 }
        return UInt16(hash % UInt32(idSpaceTagMax)) + 1
    }

    /// Allocates hold and grant ids from space `tag` from now on: ids `tag << 41 + 1` up to
    /// the next space. Called when the ledger is made (before a checkpoint or the journal is
    /// read into it), so a replay allocates as the first run did. Tag 0 (one node, no
    /// cluster) keeps ids from 1 with no end.
    public mutating func useIDSpace(tag: UInt16) {
        guard tag > 0, tag <= Ledger.idSpaceTagMax else { return }
        let base = UInt64(tag) << UInt64(Ledger.idSpaceCounterBits)
        idSpaceEnd = base + (1 << UInt64(Ledger.idSpaceCounterBits))
        if nextHoldID <= base { nextHoldID = base + 1 }
        if nextGrantID <= base { nextGrantID = base + 1 }
    }

    /// Whether `account` is frozen here, and where it went.
    public func movedFamily(of account: String) -> MovedFamily? {
        guard !movedOut.isEmpty, let slot = accountSlots[HashedString(account)] else { return nil }
        return movedOut[slot]
    }

    func familyMovedError(_ account: String, _ moved: MovedFamily) -> LedgerError {
        LedgerError(.familyMoved, level: .account, subject: "\(account) is on shard \(moved.destination) now")
    }

    /// The refusal for a command naming a frozen account (as its account, or as the parent it
    /// would attach to). Only called when some family has moved out.
    @inline(never)
    func movedRefusal(_ command: Command) -> Answer? {
        if case .moveFamilyIn = command { return nil }
        var names = [command.account]
        switch command {
        case .createAccount(let create): if let parent = create.parent { names.append(parent) }
        case .setParent(_, let parent?): names.append(parent)
        case .provision(let provision): if let parent = provision.parent { names.append(parent) }
        default: break
        }
        for name in names {
            if let slot = accountSlots[HashedString(name)], let moved = movedOut[slot] {
                return .refused(Refusal(familyMovedError(name, moved)))
            }
        }
        return nil
    }

    /// The account slots of the family rooted at `root`: the root first, then its children
    /// in slot order.
    func familySlots(root: Int32) -> [Int32] {
        var slots = [root]
        if accounts[Int(root)].childCount > 0 {
            for (slot, account) in accounts.enumerated() where account.parent == root { slots.append(Int32(slot)) }
        }
        return slots
    }

    // MARK: - Step 1: freeze

    mutating func moveFamilyOut(_ root: String, to destination: String, at now: Instant) -> Answer {
        if let error = validateIdentifier(destination, "shard") { return refused(error) }
        guard let slot = accountSlots[HashedString(root)] else { return refused(unknownAccount(root)) }
        let parent = accounts[Int(slot)].parent
        guard parent == noSlot else {
            return refused(
                LedgerError(.invalidArgument, level: .account, subject: "\(root) is a child of \(accounts[Int(parent)].id): move its family's root"))
        }
        for member in familySlots(root: slot) { movedOut[member] = MovedFamily(destination: destination, at: now) }
        return .done
    }

    // MARK: - Step 2: read

    /// The bytes `moveFamilyIn` takes: the family rooted at `root`, which must have been moved
    /// out, as it was when it was frozen.
    public func familyTransfer(root: String) -> Result<[UInt8], LedgerError> {
        guard let slot = accountSlots[HashedString(root)] else { return .failure(unknownAccount(root)) }
        guard let moved = movedOut[slot] else {
            return .failure(LedgerError(.invalidArgument, level: .account, subject: "\(root) has not been moved out of this shard"))
        }
        guard accounts[Int(slot)].parent == noSlot else {
            return .failure(LedgerError(.invalidArgument, level: .account, subject: "\(root) is not a family's root"))
        }
        var family = Ledger(limits: limits, startingAt: moved.at)
        if let error = family.adopt(self, family: familySlots(root: slot)) { return .failure(error) }
        return .success(family.encodeTransfer(root: root))
    }

    // MARK: - Step 3: add

    mutating func moveFamilyIn(_ root: String, transfer: [UInt8], at now: Instant) -> Answer {
        let family: Ledger
        do {
            family = try Ledger.decodeTransfer(transfer, root: root, limits: limits)
        } catch {
            return refused(LedgerError(.invalidArgument, level: .request, subject: "family transfer: \(error.description)"))
        }
        // The state was read at the family's clock: this ledger takes it from then on (the
        // other shard's clock may be a little ahead of this one's, never by hours).
        guard family.clock <= now.adding(microseconds: Microseconds.perHour) else {
            return refused(LedgerError(.invalidArgument, level: .request, subject: "family transfer: it is dated \(family.clock), more than an hour after this shard's clock \(now)"))
        }
        advance(to: family.clock)
        if let error = adopt(family, family: (0..<Int32(family.accounts.count)).map { $0 }) { return refused(error) }
        // Whatever fell due between the freeze and now happens now.
        advance(to: clock)
        return .done
    }

    /// Copies the family `slots` of `source` (root first) into this ledger under new slots,
    /// keeping ids, and schedules their events. Checks everything first and changes nothing
    /// when it answers an error. Frozen accounts of the same names here are set aside (their
    /// names point to the new records from then on).
    mutating func adopt(_ source: Ledger, family slots: [Int32]) -> LedgerError? {
        if source.hasLimits() { rulesInUse.value = true }
        var accountMap: [Int32: Int32] = [:]
        for (index, slot) in slots.enumerated() { accountMap[slot] = Int32(accounts.count + index) }
        // Frozen families here that share a name with the incoming one (it is coming back, or
        // a move is being undone) are set aside whole.
        var setAside = Set<Int32>()
        for slot in slots {
            let name = source.accounts[Int(slot)].id
            guard let existing = accountSlots[HashedString(name)] else { continue }
            guard movedOut[existing] != nil else {
                return LedgerError(.alreadyExists, level: .account, subject: "account \(name) is already on this shard")
            }
            let parent = accounts[Int(existing)].parent
            setAside.formUnion(familySlots(root: parent == noSlot ? existing : parent))
        }
        let sourceMembers = (0..<source.members.count).filter { source.members[$0].isLive && accountMap[source.members[$0].account] != nil }
        let sourceGroups = (0..<source.groups.count).filter { accountMap[source.groups[$0].account] != nil }
        let sourceGrants = (0..<source.grants.count).filter { source.grants[$0].isLive && accountMap[source.grants[$0].account] != nil }
        let sourceHolds = source.holds.values.filter { accountMap[$0.account] != nil }.sorted { $0.id < $1.id }
        guard accounts.count + slots.count <= limits.accountsMax else {
            return LedgerError(.limitReached, level: .ledger, subject: "accounts")
        }
        guard liveMemberCount + sourceMembers.count <= limits.membersMax else {
            return LedgerError(.limitReached, level: .ledger, subject: "members")
        }
        guard holds.count + sourceHolds.count <= limits.holdsMax else {
            return LedgerError(.limitReached, level: .ledger, subject: "open holds")
        }
        for hold in sourceHolds {
            guard let slot = holds.slot(of: HoldKey(hold.id)), !setAside.contains(holds[slot: slot].account) else { continue }
            return LedgerError(.alreadyExists, level: .ledger, subject: "hold id \(hold.id) is already in use on this shard")
        }
        for slot in sourceGrants {
            guard let existing = grantSlotByID[source.grants[slot].id], !setAside.contains(grants[Int(existing)].account) else { continue }
            return LedgerError(.alreadyExists, level: .ledger, subject: "grant id \(source.grants[slot].id) is already in use on this shard")
        }
        let familyGrants = Set(sourceGrants.map { Int32($0) })
        for hold in sourceHolds {
            // A draw consumed to zero may name a grant since retired; any other names one of the family's.
            for draw in hold.draws.all where draw.grant != noSlot && draw.amount > 0 && !familyGrants.contains(draw.grant) {
                return LedgerError(.invalidArgument, level: .account, subject: "hold \(hold.id) draws on a grant outside the family")
            }
        }

        for slot in setAside.sorted() { clearFrozen(slot) }

        // Slots: members and grants reuse free ones, as new ones would.
        var memberMap: [Int32: Int32] = [:]
        var nextMember = Int32(members.count)
        var freeMembers = freeMemberSlots
        for slot in sourceMembers {
            if let free = freeMembers.popLast() { memberMap[Int32(slot)] = free } else { memberMap[Int32(slot)] = nextMember; nextMember += 1 }
        }
        var groupMap: [Int32: Int32] = [:]
        for (index, slot) in sourceGroups.enumerated() { groupMap[Int32(slot)] = Int32(groups.count + index) }
        var grantMap: [Int32: Int32] = [:]
        var nextGrant = Int32(grants.count)
        var freeGrants = freeGrantSlots
        for slot in sourceGrants {
            if let free = freeGrants.popLast() { grantMap[Int32(slot)] = free } else { grantMap[Int32(slot)] = nextGrant; nextGrant += 1 }
        }
        func mapped(_ slot: Int32, _ map: [Int32: Int32]) -> Int32 { slot == noSlot ? noSlot : map[slot] ?? noSlot }

        // Set aside frozen accounts of the same names.
        for slot in slots { accountSlots.removeValue(forKey: HashedString(source.accounts[Int(slot)].id)) }

        for slot in slots {
            var account = source.accounts[Int(slot)]
            account.parent = mapped(account.parent, accountMap)
            account.groupSlots = account.groupSlots.mapValues { mapped($0, groupMap) }
            account.poolOrder = account.poolOrder.map { mapped($0, grantMap) }
            let newSlot = Int32(accounts.count)
            accounts.append(account)
            accountSlots[HashedString(account.id)] = newSlot
        }
        for slot in sourceGroups {
            var group = source.groups[slot]
            group.account = mapped(group.account, accountMap)
            groups.append(group)
        }
        freeMemberSlots = freeMembers
        for slot in sourceMembers {
            var member = source.members[slot]
            member.account = mapped(member.account, accountMap)
            member.groups = member.groups.map { mapped($0, groupMap) }
            member.grantOrder = member.grantOrder.map { mapped($0, grantMap) }
            let newSlot = memberMap[Int32(slot)]!
            if Int(newSlot) < members.count {
                members[Int(newSlot)] = member
                if Int(newSlot) < memberBurn.count { memberBurn[Int(newSlot)] = BurnWindow() }
            } else {
                members.append(member)
            }
            memberSlots[MemberKey(account: member.account, member: member.id)] = newSlot
            liveMemberCount += 1
        }
        freeGrantSlots = freeGrants
        for slot in sourceGrants {
            var grant = source.grants[slot]
            grant.account = mapped(grant.account, accountMap)
            grant.member = mapped(grant.member, memberMap)
            let newSlot = grantMap[Int32(slot)]!
            if Int(newSlot) < grants.count { grants[Int(newSlot)] = grant } else { grants.append(grant) }
            grantSlotByID[grant.id] = newSlot
            if grant.isScoped { grantProducts[grant.id] = source.grantProducts[grant.id] ?? [] }
            // The events still to come where the family was: an expiry already past there (an
            // expired grant kept live by what is held on it) does not happen again.
            if grant.state == .pending { schedule(.grantEffective(slot: newSlot, grant: grant.id), at: grant.effectiveAt) }
            if grant.expiresAt != .distantFuture, grant.expiresAt > source.clock {
                schedule(.grantExpiry(slot: newSlot, grant: grant.id), at: grant.expiresAt)
            }
        }
        for var hold in sourceHolds {
            hold.account = mapped(hold.account, accountMap)
            hold.member = mapped(hold.member, memberMap)
            // A draw consumed to zero on a grant since retired is never read again: left out.
            hold.draws = DrawList(exactly: hold.draws.all.compactMap { draw in
                if draw.grant == noSlot { return draw }
                return grantMap[draw.grant].map { Draw(grant: $0, amount: draw.amount) }
            })
            hold.groups = hold.groups.map { mapped($0, groupMap) }
            holds.insert(hold)
            if let rates = source.holdRates[hold.id] {
                holdRates[hold.id] = rates
                rulesInUse.value = true
            }
            schedule(.holdDeadline(hold.id), at: hold.deadline)
        }
        resolvedHolds.merge(source.resolvedHolds.entries(of: accountMap), capacity: limits.resolvedHoldsRemembered)
        for slot in slots {
            let newSlot = accountMap[slot]!
            if var state = source.subscriptions[slot] {
                state.seatMembers = state.seatMembers.map { mapped($0, memberMap) }
                subscriptions[newSlot] = state
                if state.terms != nil { schedule(.periodBoundary(account: newSlot, end: state.periodEnd), at: state.periodEnd) }
                if let pending = state.pendingSeats { schedule(.seatChange(account: newSlot, at: pending.at), at: pending.at) }
            }
            if let states = source.alerts[slot] {
                alerts[newSlot] = states.map { state in
                    var state = state
                    state.member = mapped(state.member, memberMap)
                    return state
                }
            }
            if let recharge = source.recharges[slot] { recharges[newSlot] = recharge }
            accounts[Int(newSlot)].isWatched = alerts[newSlot] != nil || recharges[newSlot] != nil
        }
        return nil
    }

    /// Empties a frozen account set aside for its family's return: its holds, grants, members,
    /// groups and watches go (they come back with the family, under the same ids); the record
    /// stays, frozen and nameless, so that the events still queued for it stay dead.
    private mutating func clearFrozen(_ slot: Int32) {
        for hold in holds.values where hold.account == slot {
            holds.remove(HoldKey(hold.id))
            holdRates.removeValue(forKey: hold.id)
        }
        for index in 0..<grants.count where grants[index].isLive && grants[index].account == slot {
            if grants[index].isScoped {
                grantProducts.removeValue(forKey: grants[index].id)
                grants[index].isScoped = false
            }
            grants[index].isLive = false
            grantSlotByID.removeValue(forKey: grants[index].id)
            freeGrantSlots.append(Int32(index))
        }
        for index in 0..<members.count where members[index].isLive && members[index].account == slot {
            memberSlots.removeValue(forKey: MemberKey(account: slot, member: members[index].id))
            var member = MemberRecord(id: members[index].id, account: slot, usage: UsageCounter(windowEnd: .epoch))
            member.isLive = false
            members[index] = member
            freeMemberSlots.append(Int32(index))
            liveMemberCount -= 1
        }
        for index in 0..<groups.count where groups[index].account == slot {
            groups[index].isLive = false
            groups[index].memberCount = 0
            groups[index].usage.held = 0
            groups[index].windows = []
        }
        var account = accounts[Int(slot)]
        account.groupSlots = [:]
        account.poolOrder = []
        account.poolAvailable = 0
        account.membersAvailable = 0
        account.overdrawn = 0
        account.overdraftHeld = 0
        account.liveGrants = 0
        account.scopedGrants = 0
        account.openHolds = 0
        account.memberCount = 0
        account.usage.held = 0
        account.windows = []
        account.holdLimit = nil
        account.memberHoldLimit = nil
        account.isWatched = false
        accounts[Int(slot)] = account
        subscriptions[slot] = nil
        alerts[slot] = nil
        recharges[slot] = nil
    }

    // MARK: - The transfer's bytes

    /// "TGF2": a family transfer whose records are in snapshot format 6 (window caps and
    /// open-hold bounds). "TGF1", format 5, is still read.
    static let transferMagic: UInt32 = 0x5447_4632
    static let transferMagicVersion1: UInt32 = 0x5447_4631

    /// The record format of a transfer's magic, or nil if it is not one.
    static func transferFormat(_ magic: UInt32) -> Int? {
        switch magic {
        case transferMagic: snapshotFormat
        case transferMagicVersion1: 5
        default: nil
        }
    }

    /// This ledger (holding one family, root first, slots dense) as a transfer.
    func encodeTransfer(root: String) -> [UInt8] {
        var w = SnapshotWriter()
        w.integer(Ledger.transferMagic)
        w.instant(clock)
        w.string(root)
        w.array(accounts) { w, account in w.write(account) }
        w.array(members) { w, member in w.write(member) }
        w.array(groups) { w, group in w.write(group) }
        w.array(grants) { w, grant in w.write(grant) }
        w.array(holds.values.sorted { $0.id < $1.id }) { w, hold in w.write(hold, withGroups: true) }
        w.array(subscriptions.sorted { $0.key < $1.key }) { w, entry in
            w.integer(entry.key)
            w.write(entry.value)
        }
        w.write(alerts: alerts)
        w.write(recharges: recharges)
        let identity = Dictionary(uniqueKeysWithValues: (0..<Int32(accounts.count)).map { ($0, $0) })
        w.array(resolvedHolds.entries(of: identity)) { w, entry in
            w.integer(entry.hold)
            w.integer(entry.resolved.account)
            w.integer(entry.resolved.resolution.rawValue)
            w.instant(entry.until)
        }
        w.write(grantProducts: grantProducts)
        w.write(holdRates: holdRates)
        return w.bytes
    }

    /// The names of the accounts a transfer carries, root first (for placing them), or nil if
    /// the bytes are not a transfer of `root`'s family.
    public static func transferAccounts(_ bytes: [UInt8], root: String) -> [String]? {
        var r = SnapshotReader(bytes: bytes)
        guard let format = (try? r.integer(UInt32.self)).flatMap(transferFormat) else { return nil }
        r.format = format
        guard (try? r.instant()) != nil, (try? r.string()) == root,
            let accounts = try? r.array({ try $0.readAccount() })
        else { return nil }
        return accounts.map(\.id)
    }

    /// A ledger holding just the family a transfer describes, at the transfer's instant.
    /// Every reference and amount is checked before anything reads through it, and then the
    /// ledger's invariants; anything wrong is a `SnapshotError`.
    static func decodeTransfer(_ bytes: [UInt8], root: String, limits: LedgerLimits) throws(SnapshotError) -> Ledger {
        func fail(_ reason: String) -> SnapshotError { SnapshotError(description: reason) }
        var family: Ledger
        do {
            var r = SnapshotReader(bytes: bytes)
            guard let format = transferFormat(try r.integer(UInt32.self)) else { throw fail("not a family transfer") }
            r.format = format
            family = Ledger(limits: limits, startingAt: try r.instant())
            guard try r.string() == root else { throw fail("it is not the family of \(root)") }
            family.accounts = ChunkedArray(try r.array { try $0.readAccount() })
            family.members = ChunkedArray(try r.array { try $0.readMember() })
            family.groups = ChunkedArray(try r.array { try $0.readGroup() })
            family.grants = ChunkedArray(try r.array { try $0.readGrant() })
            let holds = try r.array { try $0.readHold(withGroups: true) }
            let subscriptions = try r.array { r in (try r.integer(Int32.self), try r.readSubscription()) }
            let alerts = try r.readAlerts()
            let recharges = try r.readRecharges()
            let resolved = try r.array { r -> (hold: HoldID, resolved: ResolvedHolds.Resolved, until: Instant) in
                let hold = try r.integer(UInt64.self)
                let account = try r.integer(Int32.self)
                guard let resolution = HoldResolution(rawValue: try r.integer(UInt8.self)) else { throw fail("unknown hold resolution") }
                return (hold, ResolvedHolds.Resolved(account: account, resolution: resolution), try r.instant())
            }
            let products = r.format >= 6 ? try r.readGrantProducts() : [:]
            let holdRates = r.format >= 6 ? try r.readHoldRates() : [:]
            guard r.position == bytes.count else { throw fail("\(bytes.count - r.position) bytes left over") }
            guard resolved.count <= 1 << 16, Set(resolved.map(\.hold)).count == resolved.count,
                resolved.allSatisfy({ $0.resolved.account >= 0 && Int($0.resolved.account) < family.accounts.count }),
                zip(resolved, resolved.dropFirst()).allSatisfy({ $0.until <= $1.until })
            else { throw fail("its resolved holds are out of range or out of order") }
            family.resolvedHolds.merge(resolved, capacity: limits.resolvedHoldsRemembered)
            try family.checkTransferred(root: root, holds: holds, subscriptions: subscriptions, alerts: alerts, recharges: recharges)
            family.grantProducts = products
            if let problem = family.rebuildScopes() { throw fail(problem) }
            guard holdRates.keys.allSatisfy({ family.holds[HoldKey($0)] != nil }) else { throw fail("rates of a hold that is not in the transfer") }
            family.holdRates = holdRates
            if !holdRates.isEmpty { family.rulesInUse.value = true }
        } catch let error as SnapshotError {
            throw error
        } catch {
            throw fail("\(error)")
        }
        if let violation = family.invariantViolations().first { throw fail(violation) }
        return family
    }

    /// Checks a decoded family's references and amounts, then builds its indexes.
    private mutating func checkTransferred(
        root: String, holds holdList: [HoldRecord], subscriptions subscriptionList: [(Int32, SubscriptionState)],
        alerts alertList: [(Int32, [AlertState])], recharges rechargeList: [(Int32, RechargeState)]
    ) throws(SnapshotError) {
        func fail(_ reason: String) -> SnapshotError { SnapshotError(description: reason) }
        let accountCount = accounts.count
        let memberCount = members.count
        let groupCount = groups.count
        let grantCount = grants.count
        // A transfer is bounded by a frame; these bounds keep every sum the checks make far
        // from overflowing.
        let countMax = 1 << 16
        guard accountCount > 0 else { throw fail("it holds no account") }
        guard accountCount <= countMax, memberCount <= countMax, groupCount <= countMax, grantCount <= countMax, holdList.count <= countMax else {
            throw fail("it holds too many records")
        }
        let sumMax: Credits = 1 << 46
        func inRange(_ slot: Int32, _ count: Int, optional: Bool = false) -> Bool { (optional && slot == noSlot) || (slot >= 0 && Int(slot) < count) }
        func credits(_ value: Credits, _ upTo: Credits) -> Bool { value >= 0 && value <= upTo }
        func counted(_ value: Int) -> Bool { value >= 0 && value <= countMax }
        func usage(_ usage: UsageCounter) -> Bool { credits(usage.held, sumMax) && usage.consumed >= 0 }
        func identifier(_ id: String) -> Bool { !id.isEmpty && id.utf8.count <= limits.identifierBytesMax }
        func windows(_ caps: [WindowCap]) -> Bool { caps.allSatisfy { credits($0.limit, limits.creditsMax) && usage($0.usage) } }
        func bound(_ value: Int?) -> Bool { value.map { $0 >= 0 && $0 <= limits.holdsPerAccountMax } ?? true }

        for (slot, account) in accounts.enumerated() {
            guard identifier(account.id) else { throw fail("account \(slot) has a bad id") }
            if slot == 0 {
                guard account.id == root, account.parent == noSlot, Int(account.childCount) == accountCount - 1 else { throw fail("its first account is not the root \(root) of \(accountCount - 1) children") }
            } else {
                guard account.parent == 0, account.childCount == 0 else { throw fail("account \(account.id) is not a child of \(root)") }
            }
            guard account.groupSlots.values.allSatisfy({ inRange($0, groupCount) }), account.poolOrder.allSatisfy({ inRange($0, grantCount) }) else {
                throw fail("account \(account.id) names a group or grant that is not in the transfer")
            }
            guard credits(account.poolAvailable, sumMax), credits(account.overdrawn, sumMax), credits(account.overdraftHeld, sumMax), usage(account.usage),
                counted(account.memberCount), counted(account.liveGrants), counted(account.openHolds), account.capLimit.map({ credits($0, limits.creditsMax) }) ?? true,
                windows(account.windows), bound(account.holdLimit), bound(account.memberHoldLimit)
            else { throw fail("account \(account.id) has an amount out of range") }
            guard accountSlots.updateValue(Int32(slot), forKey: HashedString(account.id)) == nil else { throw fail("account \(account.id) is in it twice") }
        }
        for (slot, group) in groups.enumerated() {
            guard identifier(group.id), inRange(group.account, accountCount), usage(group.usage), counted(group.memberCount),
                group.capLimit.map({ credits($0, limits.creditsMax) }) ?? true, windows(group.windows)
            else { throw fail("group \(slot) is out of range") }
        }
        for (slot, member) in members.enumerated() {
            guard identifier(member.id), member.isLive, inRange(member.account, accountCount) else { throw fail("member \(slot) is out of range") }
            guard member.groups.allSatisfy({ inRange($0, groupCount) && groups[Int($0)].account == member.account }), member.grantOrder.allSatisfy({ inRange($0, grantCount) }) else {
                throw fail("member \(member.id) names a group or grant that is not in the transfer")
            }
            guard credits(member.available, sumMax), usage(member.usage), counted(member.openHolds), counted(member.pendingGrants),
                member.capLimit.map({ credits($0, limits.creditsMax) }) ?? true, windows(member.windows), bound(member.holdLimit)
            else { throw fail("member \(member.id) has an amount out of range") }
            guard memberSlots.updateValue(Int32(slot), forKey: MemberKey(account: member.account, member: member.id)) == nil else { throw fail("member \(member.id) is in it twice") }
            liveMemberCount += 1
            accounts[Int(member.account)].membersAvailable += member.available
        }
        for (slot, grant) in grants.enumerated() {
            guard grant.isLive, inRange(grant.account, accountCount), inRange(grant.member, memberCount, optional: true) else { throw fail("grant \(grant.id) is out of range") }
            guard [grant.amount, grant.available, grant.held, grant.consumed, grant.expired, grant.voided].allSatisfy({ credits($0, limits.creditsMax) }) else {
                throw fail("grant \(grant.id) has an amount out of range")
            }
            guard grantSlotByID[grant.id] == nil else { throw fail("grant \(grant.id) is in it twice") }
            grantSlotByID[grant.id] = Int32(slot)
        }
        for hold in holdList {
            guard hold.id > 0, inRange(hold.account, accountCount), inRange(hold.member, memberCount, optional: true) else { throw fail("hold \(hold.id) is out of range") }
            guard hold.draws.all.allSatisfy({ inRange($0.grant, grantCount, optional: true) && credits($0.amount, limits.creditsMax) }),
                hold.groups.allSatisfy({ inRange($0, groupCount) })
            else { throw fail("hold \(hold.id) names a grant or group that is not in the transfer") }
            guard credits(hold.quantity, limits.quantityMax), credits(hold.creditsPerUnit, limits.creditsMax), credits(hold.original, limits.creditsMax),
                credits(hold.held, limits.creditsMax), credits(hold.committed, limits.creditsMax)
            else { throw fail("hold \(hold.id) has an amount out of range") }
            guard holds.slot(of: HoldKey(hold.id)) == nil else { throw fail("hold \(hold.id) is in it twice") }
            holds.insert(hold)
        }
        for (slot, state) in subscriptionList {
            guard inRange(slot, accountCount), subscriptions[slot] == nil, state.seatMembers.allSatisfy({ inRange($0, memberCount) }) else {
                throw fail("a subscription is out of range")
            }
            subscriptions[slot] = state
        }
        for (slot, states) in alertList {
            guard inRange(slot, accountCount), alerts[slot] == nil, states.allSatisfy({ inRange($0.member, memberCount, optional: true) }) else {
                throw fail("an alert is out of range")
            }
            alerts[slot] = states
        }
        for (slot, state) in rechargeList {
            guard inRange(slot, accountCount), recharges[slot] == nil else { throw fail("a recharge is out of range") }
            recharges[slot] = state
        }
        for slot in Set(alerts.keys).union(recharges.keys) { accounts[Int(slot)].isWatched = true }

        // The rules the family brings, held to what the commands that set them accept, so that
        // nothing a command would refuse (a rate, a seat count, a threshold out of range) can
        // come in this way.
        for account in accounts {
            if let error = validate(account.overage) ?? validate(account.period) { throw fail("account \(account.id): \(error)") }
            guard account.rateOverrides.count <= limits.rateOverridesPerAccountMax,
                account.rateOverrides.values.allSatisfy({ history in
                    history.versions.count <= limits.rateVersionsPerProductMax
                        && history.versions.allSatisfy { $0.creditsPerUnit.map { credits($0, limits.creditsMax) } ?? true }
                })
            else { throw fail("account \(account.id) has a rate out of range") }
        }
        for (slot, state) in subscriptions {
            // A period is a billing window: within the anchors' years, at most 366 days long.
            guard state.terms == nil || state.periodStart >= Ledger.earliestAnchor, state.periodStart < state.periodEnd, state.periodEnd < Ledger.latestAnchor,
                state.periodEnd.microseconds(since: state.periodStart) <= 367 * Microseconds.perDay
            else { throw fail("the subscription of \(accounts[Int(slot)].id) has a period out of range") }
            let seatCounts = [state.seats] + (state.pendingSeats.map { [$0.seats] } ?? [])
            guard seatCounts.allSatisfy({ $0 >= 0 && $0 <= limits.seatsPerAccountMax }) else { throw fail("a subscription has a seat count out of range") }
            for terms in [state.terms, state.nextTerms ?? nil].compactMap({ $0 }) {
                for seats in seatCounts {
                    if let error = problem(subscription: terms, seats: seats, account: slot) { throw fail("the subscription of \(accounts[Int(slot)].id): \(error)") }
                }
            }
        }
        for (slot, states) in alerts {
            guard states.count <= limits.alertsPerAccountMax else { throw fail("\(accounts[Int(slot)].id) has too many alerts") }
            for state in states {
                if let error = problem(alert: state.rule) { throw fail("an alert of \(accounts[Int(slot)].id): \(error)") }
            }
        }
        for (slot, state) in recharges {
            if let error = problem(recharge: state.rule) { throw fail("the auto-recharge of \(accounts[Int(slot)].id): \(error)") }
            guard state.count >= 0 else { throw fail("the auto-recharge of \(accounts[Int(slot)].id) has a negative count") }
        }
    }
}
