/// The admin operations: accounts, members, groups, caps, grants, rates and policies.
extension Ledger {
    // MARK: - Accounts

    mutating func createAccount(_ create: CreateAccount, at now: Instant) -> Answer {
        if let error = validateIdentifier(create.account, "account") { return refused(error) }
        if let error = validate(create.overage) { return refused(error) }
        let period = create.period ?? .monthly(anchor: now)
        if let error = validate(period) { return refused(error) }
        guard accountSlots[HashedString(create.account)] == nil else {
            return refused(LedgerError(.alreadyExists, level: .account, subject: create.account))
        }
        guard accounts.count < limits.accountsMax else {
            return refused(LedgerError(.limitReached, level: .ledger, subject: "accounts"))
        }
        var parentSlot = noSlot
        if let parent = create.parent {
            switch parentFor(create.account, parent) {
            case .failure(let error): return refused(error)
            case .success(let slot): parentSlot = slot
            }
        }
        let slot = Int32(accounts.count)
        accounts.append(
            AccountRecord(
                id: create.account, parent: parentSlot, overage: create.overage, period: period,
                usage: UsageCounter(windowEnd: period.window(containing: now).end)))
        accountSlots[HashedString(create.account)] = slot
        if parentSlot != noSlot { accounts[Int(parentSlot)].childCount += 1 }
        return .done
    }

    /// A parent must exist, must not be the account itself and must not have a parent of its
    /// own: the hierarchy is one level deep.
    private func parentFor(_ account: String, _ parent: String) -> Result<Int32, LedgerError> {
        guard let slot = accountSlots[HashedString(parent)] else {
            return .failure(LedgerError(.unknownAccount, level: .parent, subject: parent))
        }
        guard parent != account, accounts[Int(slot)].parent == noSlot else {
            return .failure(LedgerError(.invalidArgument, level: .parent, subject: "a parent account cannot itself have a parent"))
        }
        return .success(slot)
    }

    /// Changing the parent of an account with open holds is refused: those holds may be
    /// drawing on the old parent's pool. The new parent's cap counts from the change on.
    mutating func setParent(_ account: String, parent: String?, at now: Instant) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        guard accounts[Int(slot)].openHolds == 0 else {
            return refused(LedgerError(.inUse, level: .account, subject: "account has open holds"))
        }
        var parentSlot = noSlot
        if let parent {
            guard accounts[Int(slot)].childCount == 0 else {
                return refused(LedgerError(.invalidArgument, level: .account, subject: "an account with children cannot have a parent"))
            }
            switch parentFor(account, parent) {
            case .failure(let error): return refused(error)
            case .success(let value): parentSlot = value
            }
        }
        let old = accounts[Int(slot)].parent
        if old != noSlot { accounts[Int(old)].childCount -= 1 }
        accounts[Int(slot)].parent = parentSlot
        if parentSlot != noSlot { accounts[Int(parentSlot)].childCount += 1 }
        return .done
    }

    mutating func setOverage(_ account: String, policy: OveragePolicy) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        if let error = validate(policy) { return refused(error) }
        accounts[Int(slot)].overage = policy
        return .done
    }

    /// A new period takes effect at the end of the current one: consumption so far keeps
    /// counting against the caps until then.
    mutating func setPeriod(_ account: String, period: BillingPeriod) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        if let error = validate(period) { return refused(error) }
        accounts[Int(slot)].period = period
        return .done
    }

    mutating func setAccountCap(_ account: String, limit: Credits?) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        if let limit, let error = validateCredits(limit, "cap", allowZero: true) { return refused(error) }
        accounts[Int(slot)].capLimit = limit
        return .done
    }

    // MARK: - Members

    mutating func addMember(_ account: String, member: String, at now: Instant) -> Answer {
        guard let accountSlot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        if let error = validateIdentifier(member, "member") { return refused(error) }
        guard memberSlots[MemberKey(account: accountSlot, member: member)] == nil else {
            return refused(LedgerError(.alreadyExists, level: .member, subject: member))
        }
        guard accounts[Int(accountSlot)].memberCount < limits.membersPerAccountMax else {
            return refused(LedgerError(.limitReached, level: .account, subject: "members per account"))
        }
        guard liveMemberCount < limits.membersMax else {
            return refused(LedgerError(.limitReached, level: .ledger, subject: "members"))
        }
        if let error = admitsSeatMember(accountSlot) { return refused(error) }
        let windowEnd = accounts[Int(accountSlot)].period.window(containing: now).end
        let record = MemberRecord(id: member, account: accountSlot, usage: UsageCounter(windowEnd: windowEnd))
        let slot: Int32
        if let free = freeMemberSlots.popLast() {
            slot = free
            members[Int(slot)] = record
        } else {
            slot = Int32(members.count)
            members.append(record)
        }
        memberSlots[MemberKey(account: accountSlot, member: member)] = slot
        accounts[Int(accountSlot)].memberCount += 1
        liveMemberCount += 1
        seatMemberAdded(slot, account: accountSlot, at: now)
        return .done
    }

    /// Removing a member with open holds is refused. It leaves its groups (what it consumed in
    /// them stays counted this period), and grants scoped to it are voided, since no one else
    /// can draw them.
    mutating func removeMember(_ account: String, member: String, at now: Instant) -> Answer {
        let slot: Int32
        switch memberSlot(account, member) {
        case .failure(let error): return refused(error)
        case .success(let value): slot = value.member
        }
        let index = Int(slot)
        guard members[index].openHolds == 0 else {
            return refused(LedgerError(.inUse, level: .member, subject: "member has open holds"))
        }
        seatMemberRemoving(slot, account: members[index].account, at: now)
        dropAlerts(member: slot, account: members[index].account)
        if Int(slot) < memberBurn.count { memberBurn[Int(slot)] = BurnWindow() }
        for group in members[index].groups { leave(group: group, member: slot) }
        for grant in members[index].grantOrder { endGrant(grant, as: .voided) }
        if members[index].pendingGrants > 0 {
            for grant in grants.indices where grants[grant].isLive && grants[grant].member == slot {
                endGrant(Int32(grant), as: .voided)
            }
        }
        precondition(members[index].available == 0 && members[index].grantOrder.isEmpty, "a removed member keeps no grants")
        members[index].isLive = false
        members[index].groups = []
        memberSlots.removeValue(forKey: MemberKey(account: members[index].account, member: member))
        accounts[Int(members[index].account)].memberCount -= 1
        freeMemberSlots.append(slot)
        liveMemberCount -= 1
        return .done
    }

    mutating func setMemberCap(_ account: String, member: String, limit: Credits?) -> Answer {
        if let limit, let error = validateCredits(limit, "cap", allowZero: true) { return refused(error) }
        switch memberSlot(account, member) {
        case .failure(let error): return refused(error)
        case .success(let slots):
            members[Int(slots.member)].capLimit = limit
            return .done
        }
    }

    // MARK: - Groups

    mutating func createGroup(_ account: String, group: String, at now: Instant) -> Answer {
        guard let accountSlot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        if let error = validateIdentifier(group, "group") { return refused(error) }
        guard accounts[Int(accountSlot)].groupSlots[HashedString(group)] == nil else {
            return refused(LedgerError(.alreadyExists, level: .group, subject: group))
        }
        guard accounts[Int(accountSlot)].groupSlots.count < limits.groupsPerAccountMax else {
            return refused(LedgerError(.limitReached, level: .account, subject: "groups per account"))
        }
        let windowEnd = accounts[Int(accountSlot)].period.window(containing: now).end
        accounts[Int(accountSlot)].groupSlots[HashedString(group)] = Int32(groups.count)
        groups.append(GroupRecord(id: group, account: accountSlot, usage: UsageCounter(windowEnd: windowEnd)))
        return .done
    }

    /// Members leave the group and its name is free again (a new group of that name starts at 0).
    /// Open holds made in it are not refused: they resolve against the closed group's record,
    /// which no later decision reads.
    mutating func deleteGroup(_ account: String, group: String, at now: Instant) -> Answer {
        let slots: (account: Int32, group: Int32)
        switch groupSlot(account, group) {
        case .failure(let error): return refused(error)
        case .success(let value): slots = value
        }
        for member in members.indices where members[member].isLive && members[member].groups.contains(slots.group) {
            leave(group: slots.group, member: Int32(member))
        }
        groups[Int(slots.group)].isLive = false
        accounts[Int(slots.account)].groupSlots.removeValue(forKey: HashedString(group))
        return .done
    }

    mutating func setGroupCap(_ account: String, group: String, limit: Credits?) -> Answer {
        if let limit, let error = validateCredits(limit, "cap", allowZero: true) { return refused(error) }
        switch groupSlot(account, group) {
        case .failure(let error): return refused(error)
        case .success(let slots):
            groups[Int(slots.group)].capLimit = limit
            return .done
        }
    }

    /// From now on the member's decisions count against the group. What it consumed before, or
    /// holds now (holds made outside the group), is not imported: a group's consumption is what
    /// was decided for its members while they were in it.
    mutating func addToGroup(_ account: String, group: String, member: String, at now: Instant) -> Answer {
        let groupSlot: Int32
        switch self.groupSlot(account, group) {
        case .failure(let error): return refused(error)
        case .success(let value): groupSlot = value.group
        }
        let memberSlot: Int32
        switch self.memberSlot(account, member) {
        case .failure(let error): return refused(error)
        case .success(let value): memberSlot = value.member
        }
        let memberIndex = Int(memberSlot)
        guard !members[memberIndex].groups.contains(groupSlot) else {
            return refused(LedgerError(.alreadyExists, level: .group, subject: "\(member) is already in \(group)"))
        }
        guard members[memberIndex].groups.count < limits.groupsPerMemberMax else {
            return refused(LedgerError(.limitReached, level: .member, subject: "groups per member"))
        }
        groups[Int(groupSlot)].memberCount += 1
        members[memberIndex].groups.append(groupSlot)
        return .done
    }

    mutating func removeFromGroup(_ account: String, group: String, member: String, at now: Instant) -> Answer {
        let groupSlot: Int32
        switch self.groupSlot(account, group) {
        case .failure(let error): return refused(error)
        case .success(let value): groupSlot = value.group
        }
        let memberSlot: Int32
        switch self.memberSlot(account, member) {
        case .failure(let error): return refused(error)
        case .success(let value): memberSlot = value.member
        }
        guard members[Int(memberSlot)].groups.contains(groupSlot) else {
            return refused(LedgerError(.notInGroup, level: .group, subject: "\(member) is not in \(group)"))
        }
        leave(group: groupSlot, member: memberSlot)
        return .done
    }

    /// The member's later decisions stop counting against the group. What was consumed in it
    /// stays consumed this period, and holds made while in it stay counted until resolved.
    private mutating func leave(group: Int32, member: Int32) {
        groups[Int(group)].memberCount -= 1
        members[Int(member)].groups.removeAll { $0 == group }
    }

    // MARK: - Grants

    mutating func addGrant(_ grant: AddGrant, at now: Instant) -> Answer {
        guard let accountSlot = accountSlots[HashedString(grant.account)] else { return refused(unknownAccount(grant.account)) }
        if let error = validateCredits(grant.amount, "grant amount") { return refused(error) }
        let effectiveAt = max(grant.effectiveAt, now)
        guard grant.expiresAt > effectiveAt else {
            return refused(LedgerError(.invalidArgument, level: .request, subject: "expires-at must be after effective-at and after now"))
        }
        var memberSlot = noSlot
        if case .member(let member) = grant.scope {
            guard let slot = memberSlots[MemberKey(account: accountSlot, member: member)] else {
                return refused(LedgerError(.unknownMember, level: .member, subject: member))
            }
            memberSlot = slot
        }
        if let error = problem(products: grant.products) { return refused(error) }
        guard accounts[Int(accountSlot)].liveGrants < limits.grantsPerAccountMax else {
            return refused(LedgerError(.limitReached, level: .account, subject: "grants per account"))
        }
        guard nextGrantID < idSpaceEnd else {
            return refused(LedgerError(.limitReached, level: .ledger, subject: "grant ids of this shard's id space"))
        }
        let id = createGrant(
            account: accountSlot, member: memberSlot, amount: grant.amount, priority: grant.priority, effectiveAt: effectiveAt,
            expiresAt: grant.expiresAt, source: grant.source, at: now)
        if !grant.products.isEmpty, let slot = grantSlotByID[id] { scope(slot, to: grant.products) }
        return .grantAdded(id)
    }

    /// Creates a grant that has been validated (or that the ledger issues itself, such as a
    /// subscription's included credits), activating it at once or when it becomes effective.
    mutating func createGrant(
        account accountSlot: Int32, member memberSlot: Int32, amount: Credits, priority: Int32, effectiveAt: Instant, expiresAt: Instant,
        source: GrantSource, at now: Instant
    ) -> GrantID {
        let id = nextGrantID
        nextGrantID += 1
        let record = GrantRecord(
            id: id, account: accountSlot, member: memberSlot, memberID: memberSlot == noSlot ? nil : members[Int(memberSlot)].id, amount: amount,
            available: amount, priority: priority, effectiveAt: effectiveAt, expiresAt: expiresAt,
            source: source, createdAt: now, state: .pending)
        let slot: Int32
        if let free = freeGrantSlots.popLast() {
            slot = free
            grants[Int(slot)] = record
        } else {
            slot = Int32(grants.count)
            grants.append(record)
        }
        grantSlotByID[id] = slot
        accounts[Int(accountSlot)].liveGrants += 1
        // Every grant starts pending; activation moves it into its draw order.
        if memberSlot != noSlot { members[Int(memberSlot)].pendingGrants += 1 }
        if effectiveAt <= now {
            activateGrant(slot)
        } else {
            schedule(.grantEffective(slot: slot, grant: id), at: effectiveAt)
        }
        if expiresAt != .distantFuture {
            schedule(.grantExpiry(slot: slot, grant: id), at: expiresAt)
        }
        return id
    }

    /// What is available moves to `voided`; what is held stays with its holds, and goes to
    /// `voided` if they give it back.
    mutating func voidGrant(_ account: String, grant: GrantID) -> Answer {
        guard let accountSlot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        guard let slot = grantSlotByID[grant], grants[Int(slot)].account == accountSlot else {
            return refused(LedgerError(.unknownGrant, level: .account, subject: String(grant)))
        }
        switch grants[Int(slot)].state {
        case .pending, .active:
            endGrant(slot, as: .voided)
            return .done
        case .expired, .voided:
            return refused(LedgerError(.grantNotLive, level: .account, subject: String(grant)))
        }
    }

    // MARK: - Rates

    /// An `effectiveAt` in the past takes effect at once. Holds already made keep the rate
    /// they were priced at.
    mutating func setRate(_ product: String, creditsPerUnit: Credits, effectiveAt: Instant, at now: Instant) -> Answer {
        if let error = validateIdentifier(product, "product") { return refused(error) }
        if let error = validateCredits(creditsPerUnit, "rate", allowZero: true) { return refused(error) }
        guard rates[HashedString(product)] != nil || rates.count < limits.productsMax else {
            return refused(LedgerError(.limitReached, level: .ledger, subject: "products"))
        }
        // Superseded versions are dropped as new ones come, so the limit counts the versions
        // still to take effect: a rate can change any number of times.
        guard (rates[HashedString(product)]?.pending(after: now) ?? 0) < limits.rateVersionsPerProductMax else {
            return refused(LedgerError(.limitReached, level: .ledger, subject: "rate versions still to take effect per product"))
        }
        rates[HashedString(product), default: RateHistory()].set(creditsPerUnit, from: max(effectiveAt, now), now: now)
        return .done
    }

    mutating func setAccountRate(_ account: String, product: String, creditsPerUnit: Credits?, effectiveAt: Instant, at now: Instant) -> Answer {
        guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
        if let error = validateIdentifier(product, "product") { return refused(error) }
        if let creditsPerUnit, let error = validateCredits(creditsPerUnit, "rate", allowZero: true) { return refused(error) }
        guard rates[HashedString(product)] != nil else {
            return refused(LedgerError(.unknownProduct, level: .request, subject: product))
        }
        let key = HashedString(product)
        let overrides = accounts[Int(slot)].rateOverrides
        guard overrides[key] != nil || overrides.count < limits.rateOverridesPerAccountMax,
            (overrides[key]?.pending(after: now) ?? 0) < limits.rateVersionsPerProductMax
        else {
            return refused(LedgerError(.limitReached, level: .account, subject: "rate overrides per account"))
        }
        accounts[Int(slot)].rateOverrides[key, default: RateHistory()].set(creditsPerUnit, from: max(effectiveAt, now), now: now)
        return .done
    }

    // MARK: - Helpers

    func validate(_ policy: OveragePolicy) -> LedgerError? {
        switch policy {
        case .deny: return nil
        case .overdraft(let limit): return validateCredits(limit, "overdraft limit", allowZero: true)
        case .finish(let percent):
            guard percent >= 0, percent <= limits.finishPercentMax else {
                return LedgerError(.invalidArgument, level: .request, subject: "finish percent must be 0 to \(limits.finishPercentMax)")
            }
            return nil
        }
    }

    /// Period anchors are kept to years 1900 to 9999 and fixed lengths to one second to one
    /// year, so calendar arithmetic stays far from overflow whatever a client sends.
    func validate(_ period: BillingPeriod) -> LedgerError? {
        let anchor: Instant
        switch period {
        case .monthly(let value):
            anchor = value
        case .fixed(let value, let length):
            anchor = value
            guard length >= Microseconds.perSecond, length <= 366 * Microseconds.perDay else {
                return LedgerError(.invalidArgument, level: .request, subject: "period length must be 1 second to 366 days")
            }
        }
        guard anchor >= Ledger.earliestAnchor, anchor < Ledger.latestAnchor else {
            return LedgerError(.invalidArgument, level: .request, subject: "period anchor must be in the years 1900 to 9999")
        }
        return nil
    }

    static let earliestAnchor = CivilTime(year: 1900, month: 1, day: 1).instant
    static let latestAnchor = CivilTime(year: 10_000, month: 1, day: 1).instant

    func refused(_ error: LedgerError) -> Answer {
        .refused(Refusal(error))
    }

    func unknownAccount(_ account: String) -> LedgerError {
        LedgerError(.unknownAccount, level: .account, subject: account)
    }

    func memberSlot(_ account: String, _ member: String) -> Result<(account: Int32, member: Int32), LedgerError> {
        guard let accountSlot = accountSlots[HashedString(account)] else { return .failure(unknownAccount(account)) }
        guard let slot = memberSlots[MemberKey(account: accountSlot, member: member)] else {
            return .failure(LedgerError(.unknownMember, level: .member, subject: member))
        }
        return .success((accountSlot, slot))
    }

    func groupSlot(_ account: String, _ group: String) -> Result<(account: Int32, group: Int32), LedgerError> {
        guard let accountSlot = accountSlots[HashedString(account)] else { return .failure(unknownAccount(account)) }
        guard let slot = accounts[Int(accountSlot)].groupSlots[HashedString(group)] else {
            return .failure(LedgerError(.unknownGroup, level: .group, subject: group))
        }
        return .success((accountSlot, slot))
    }
}
