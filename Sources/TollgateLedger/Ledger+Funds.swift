/// Moving credits between grants, holds and usage counters. Every function here keeps
/// `amount = available + held + consumed + expired + voided` for each grant, and keeps the
/// aggregates (`poolAvailable`, a member's `available`, the usage counters) equal to the sums
/// they stand for.
extension Ledger {
    // MARK: - Drawing

    /// Takes `amount` from the chain's grants in draw order: the member's own grants and the
    /// account's pool interleaved by priority, expiry and creation, then the parent's pool, then
    /// the overdraft. When `holding`, the credits move to held and the draws are returned for
    /// the hold; otherwise they are consumed at once. The caller has checked that the funds
    /// (or the overage policy) cover `amount`.
    mutating func drawFunds(_ chain: Chain, _ amount: Credits, holding: Bool, product: String) -> DrawList {
        // Grants scoped to other products are passed over (Ledger+Scopes.swift).
        var only: String?
        if rulesInUse.value, chainHasScopedGrants(chain) { only = product }
        var draws = DrawList()
        var remaining = amount
        var spentSome = false
        let account = Int(chain.account)
        if chain.member != noSlot {
            let member = Int(chain.member)
            var memberIndex = 0
            var poolIndex = 0
            while remaining > 0 {
                let memberCount = members[member].grantOrder.count
                let poolCount = accounts[account].poolOrder.count
                let slot: Int32
                if memberIndex < memberCount && poolIndex < poolCount {
                    let memberSlot = members[member].grantOrder[memberIndex]
                    let poolSlot = accounts[account].poolOrder[poolIndex]
                    if grants[Int(memberSlot)].drawsBefore(grants[Int(poolSlot)]) {
                        slot = memberSlot
                        memberIndex += 1
                    } else {
                        slot = poolSlot
                        poolIndex += 1
                    }
                } else if memberIndex < memberCount {
                    slot = members[member].grantOrder[memberIndex]
                    memberIndex += 1
                } else if poolIndex < poolCount {
                    slot = accounts[account].poolOrder[poolIndex]
                    poolIndex += 1
                } else {
                    break
                }
                take(from: slot, &remaining, holding: holding, into: &draws, spentSome: &spentSome, only: only)
            }
        } else {
            var poolIndex = 0
            while remaining > 0 && poolIndex < accounts[account].poolOrder.count {
                take(from: accounts[account].poolOrder[poolIndex], &remaining, holding: holding, into: &draws, spentSome: &spentSome, only: only)
                poolIndex += 1
            }
        }
        if chain.parent != noSlot {
            let parent = Int(chain.parent)
            var poolIndex = 0
            while remaining > 0 && poolIndex < accounts[parent].poolOrder.count {
                take(from: accounts[parent].poolOrder[poolIndex], &remaining, holding: holding, into: &draws, spentSome: &spentSome, only: only)
                poolIndex += 1
            }
        }
        if remaining > 0 {
            if holding {
                accounts[account].overdraftHeld += remaining
                draws.append(Draw(grant: noSlot, amount: remaining))
            } else {
                accounts[account].overdrawn = accounts[account].overdrawn.addingClamped(remaining)
            }
        }
        if spentSome {
            // Grants consumed to nothing leave the draw order; done after the loop so the
            // loop's indices stay valid.
            if chain.member != noSlot { retireSpentGrants(member: chain.member) }
            retireSpentGrants(poolOf: chain.account)
            if chain.parent != noSlot { retireSpentGrants(poolOf: chain.parent) }
        }
        return draws
    }

    private mutating func take(
        from slot: Int32, _ remaining: inout Credits, holding: Bool, into draws: inout DrawList, spentSome: inout Bool, only: String?
    ) {
        let index = Int(slot)
        if only != nil, grants[index].isScoped, !covers(slot, only!) { return }
        let amount = min(grants[index].available, remaining)
        guard amount > 0 else { return }
        if grants[index].take(amount, holding: holding) { spentSome = true }
        if holding { draws.append(Draw(grant: slot, amount: amount)) }
        adjustAvailable(of: slot, by: -amount)
        remaining -= amount
    }

    /// Keeps the member's or the pool's `available` total in step with an active grant.
    private mutating func adjustAvailable(of slot: Int32, by delta: Credits) {
        let grant = Int(slot)
        if grants[grant].member != noSlot {
            members[Int(grants[grant].member)].available += delta
            accounts[Int(grants[grant].account)].membersAvailable += delta
        } else {
            accounts[Int(grants[grant].account)].poolAvailable += delta
        }
    }

    // MARK: - Holds

    /// Consumes `amount` of a hold's draws, first drawn first.
    mutating func consume(_ amount: Credits, from hold: inout HoldRecord) {
        var remaining = amount
        var index = 0
        while remaining > 0 {
            precondition(index < hold.draws.count, "consuming more than the hold's draws")
            let take = min(hold.draws[index].amount, remaining)
            if take > 0 {
                let slot = hold.draws[index].grant
                hold.draws[index].amount -= take
                remaining -= take
                if slot == noSlot {
                    accounts[Int(hold.account)].overdraftHeld -= take
                    accounts[Int(hold.account)].overdrawn = accounts[Int(hold.account)].overdrawn.addingClamped(take)
                } else {
                    grants[Int(slot)].consumeHeld(take)
                    retireIfDead(slot)
                }
            }
            index += 1
        }
        hold.held -= amount
    }

    /// Ends a hold: what it still holds goes back to its grants, last drawn first (to
    /// `expired` or `voided` if the grant has since expired or been voided), the counters
    /// drop it, and the resolution is remembered.
    mutating func finish(_ hold: HoldRecord, as resolution: HoldResolution, at now: Instant) {
        var index = hold.draws.count - 1
        while index >= 0 {
            let draw = hold.draws[index]
            if draw.amount > 0 { giveBack(draw, account: hold.account) }
            index -= 1
        }
        addUsage(chain(of: hold), held: -hold.held, consumed: 0, at: now)
        holds.remove(HoldKey(hold.id))
        if rulesInUse.value, !holdRates.isEmpty { holdRates.removeValue(forKey: hold.id) }
        accounts[Int(hold.account)].openHolds -= 1
        if hold.member != noSlot { members[Int(hold.member)].openHolds -= 1 }
        resolvedHolds.remember(
            hold.id, account: hold.account, resolution,
            until: now.adding(microseconds: limits.resolvedHoldsRetentionMicroseconds),
            capacity: limits.resolvedHoldsRemembered)
    }

    private mutating func giveBack(_ draw: Draw, account: Int32) {
        if draw.grant == noSlot {
            accounts[Int(account)].overdraftHeld -= draw.amount
            return
        }
        let grant = Int(draw.grant)
        grants[grant].held -= draw.amount
        switch grants[grant].state {
        case .active:
            grants[grant].available += draw.amount
            adjustAvailable(of: draw.grant, by: draw.amount)
        case .expired:
            grants[grant].expired += draw.amount
        case .voided:
            grants[grant].voided += draw.amount
        case .pending:
            preconditionFailure("a grant that is not yet effective cannot have been drawn from")
        }
        retireIfDead(draw.grant)
    }

    // MARK: - Usage counters

    /// Adds to held and consumed at every level of the chain: the member, each group the chain
    /// counts against (what a group has consumed is what was decided for its members while they
    /// were in it), the account and the parent. Each counter first rolls into the current period.
    mutating func addUsage(_ chain: Chain, held: Credits, consumed: Credits, at now: Instant) {
        let account = Int(chain.account)
        let period = accounts[account].period
        if chain.member != noSlot {
            let member = Int(chain.member)
            members[member].usage.record(held: held, consumed: consumed, at: now, period: period)
            for group in chain.groups {
                groups[Int(group)].usage.record(held: held, consumed: consumed, at: now, period: period)
            }
        }
        accounts[account].usage.record(held: held, consumed: consumed, at: now, period: period)
        if consumed > 0 {
            ledgerBurn.add(consumed, at: now)
            while accountBurn.count <= account { accountBurn.append(BurnWindow()) }
            accountBurn[account].add(consumed, at: now)
            if chain.member != noSlot {
                let member = Int(chain.member)
                while memberBurn.count <= member { memberBurn.append(BurnWindow()) }
                memberBurn[member].add(consumed, at: now)
            }
        }
        if chain.parent != noSlot {
            let parent = Int(chain.parent)
            let parentPeriod = accounts[parent].period
            accounts[parent].usage.record(held: held, consumed: consumed, at: now, period: parentPeriod)
        }
        if chainHasWindows(chain) { addWindowUsage(chain, held: held, consumed: consumed, at: now) }
    }

    // MARK: - Grant lifecycle

    /// Puts a grant into its draw order and makes its credits available.
    mutating func activateGrant(_ slot: Int32) {
        let grant = Int(slot)
        if grants[grant].state == .pending, grants[grant].member != noSlot {
            members[Int(grants[grant].member)].pendingGrants -= 1
        }
        grants[grant].state = .active
        let account = grants[grant].account
        if grants[grant].member != noSlot {
            var order = takeDrawOrder(member: grants[grant].member)
            insert(slot, into: &order)
            members[Int(grants[grant].member)].grantOrder = order
        } else {
            var order = takePoolOrder(account)
            insert(slot, into: &order)
            accounts[Int(account)].poolOrder = order
        }
        adjustAvailable(of: slot, by: grants[grant].available)
    }

    /// Moves what is left available to `expired`; credits held on the grant stay held and go
    /// to `expired` when their hold gives them back.
    mutating func expireGrant(_ slot: Int32) {
        endGrant(slot, as: .expired)
    }

    /// Voids up to `amount` of what a live grant still has available; returns how much.
    mutating func voidPart(_ slot: Int32, upTo amount: Credits) -> Credits {
        let grant = Int(slot)
        guard grants[grant].isLive, grants[grant].state == .active || grants[grant].state == .pending else { return 0 }
        let taken = min(amount, grants[grant].available)
        guard taken > 0 else { return 0 }
        if grants[grant].state == .active { adjustAvailable(of: slot, by: -taken) }
        grants[grant].available -= taken
        grants[grant].voided += taken
        retireIfDead(slot)
        return taken
    }

    mutating func endGrant(_ slot: Int32, as state: GrantState) {
        let grant = Int(slot)
        let available = grants[grant].available
        if grants[grant].state == .active {
            adjustAvailable(of: slot, by: -available)
            removeFromDrawOrder(slot)
        } else if grants[grant].state == .pending, grants[grant].member != noSlot {
            members[Int(grants[grant].member)].pendingGrants -= 1
        }
        grants[grant].available = 0
        if state == .expired { grants[grant].expired += available } else { grants[grant].voided += available }
        grants[grant].state = state
        retireIfDead(slot)
    }

    /// Frees a grant that can neither hand out nor take back credits: nothing held on it and
    /// nothing available (spent, expired or voided).
    mutating func retireIfDead(_ slot: Int32) {
        let grant = Int(slot)
        guard grants[grant].isLive, grants[grant].held == 0 else { return }
        switch grants[grant].state {
        case .pending: return
        case .active:
            guard grants[grant].available == 0 else { return }
            removeFromDrawOrder(slot)
        case .expired, .voided: break
        }
        retire(slot)
    }

    private mutating func retire(_ slot: Int32) {
        let grant = Int(slot)
        if grants[grant].isScoped { unscope(slot) }
        grants[grant].isLive = false
        retiredTotals.add(grants[grant])
        accounts[Int(grants[grant].account)].liveGrants -= 1
        grantSlotByID.removeValue(forKey: grants[grant].id)
        freeGrantSlots.append(slot)
    }

    private mutating func retireSpentGrants(member: Int32) {
        var order = takeDrawOrder(member: member)
        var spent: [Int32] = []
        order.removeAll { slot in
            let isSpent = grants[Int(slot)].available == 0 && grants[Int(slot)].held == 0
            if isSpent { spent.append(slot) }
            return isSpent
        }
        members[Int(member)].grantOrder = order
        for slot in spent { retire(slot) }
    }

    private mutating func retireSpentGrants(poolOf account: Int32) {
        var order = takePoolOrder(account)
        var spent: [Int32] = []
        order.removeAll { slot in
            let isSpent = grants[Int(slot)].available == 0 && grants[Int(slot)].held == 0
            if isSpent { spent.append(slot) }
            return isSpent
        }
        accounts[Int(account)].poolOrder = order
        for slot in spent { retire(slot) }
    }

    private mutating func removeFromDrawOrder(_ slot: Int32) {
        let grant = Int(slot)
        if grants[grant].member != noSlot {
            let member = Int(grants[grant].member)
            if let index = members[member].grantOrder.firstIndex(of: slot) { members[member].grantOrder.remove(at: index) }
        } else {
            let account = Int(grants[grant].account)
            if let index = accounts[account].poolOrder.firstIndex(of: slot) { accounts[account].poolOrder.remove(at: index) }
        }
    }

    /// Moves a draw order out of its record so it can be edited while other records are read,
    /// without copying it.
    private mutating func takeDrawOrder(member: Int32) -> [Int32] {
        var order: [Int32] = []
        swap(&order, &members[Int(member)].grantOrder)
        return order
    }

    private mutating func takePoolOrder(_ account: Int32) -> [Int32] {
        var order: [Int32] = []
        swap(&order, &accounts[Int(account)].poolOrder)
        return order
    }

    private func insert(_ slot: Int32, into order: inout [Int32]) {
        var low = 0
        var high = order.count
        while low < high {
            let middle = (low + high) / 2
            if grants[Int(order[middle])].drawsBefore(grants[Int(slot)]) { low = middle + 1 } else { high = middle }
        }
        order.insert(slot, at: low)
    }
}
