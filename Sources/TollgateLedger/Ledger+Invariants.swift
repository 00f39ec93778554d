/// The invariants of DESIGN.md that can be read off the state alone. Tests call this after
/// every step; an empty list means the state is consistent. Invariants about history (no
/// decision exceeded a cap, retries never charged twice) are checked by the tests that drive
/// the history.
extension Ledger {
    /// A family moved out keeps its records as they were when it was frozen: time-driven
    /// checks do not apply to them.
    private func isFrozen(_ account: Int32) -> Bool { !movedOut.isEmpty && movedOut[account] != nil }

    public func invariantViolations() -> [String] {
        var violations: [String] = []
        func expect(_ condition: Bool, _ message: @autoclosure () -> String) {
            if !condition { violations.append(message()) }
        }
        // Every window cap of a level counts what the level holds; at most one cap per window
        // and mode, and the period's hard cap is not among them.
        func expectWindows(_ windows: [WindowCap], _ usage: UsageCounter, _ level: @autoclosure () -> String) {
            for cap in windows {
                expect(cap.usage.held == usage.held, "\(level()) \(cap.window.name) \(cap.mode.name) cap counts \(cap.usage.held) held, the level holds \(usage.held)")
                expect(cap.limit >= 0 && cap.usage.consumed >= 0, "\(level()) \(cap.window.name) cap has a negative amount")
            }
            expect(
                windows.count <= Ledger.windowCapsPerLevelMax && Set(windows.map { [$0.window.rawValue, $0.mode.rawValue] }).count == windows.count
                    && !windows.contains { $0.window == .period && $0.mode == .hard },
                "\(level()) has duplicate window caps")
        }

        // Grants: amount = available + held + consumed + expired + voided, and state rules.
        var liveGrantsPerAccount = [Int](repeating: 0, count: accounts.count)
        var pendingPerMember = [Int](repeating: 0, count: members.count)
        for (slot, grant) in grants.enumerated() where grant.isLive {
            expect(grant.isBalanced, "grant \(grant.id): \(grant.amount) != \(grant.available) available + \(grant.held) held + \(grant.consumed) consumed + \(grant.expired) expired + \(grant.voided) voided")
            expect(grantSlotByID[grant.id] == Int32(slot), "grant \(grant.id) is not indexed by its id")
            liveGrantsPerAccount[Int(grant.account)] += 1
            switch grant.state {
            case .pending:
                if grant.member != noSlot { pendingPerMember[Int(grant.member)] += 1 }
                expect(grant.available == grant.amount && (grant.effectiveAt > clock || isFrozen(grant.account)), "pending grant \(grant.id) was drawn or is overdue")
            case .active:
                expect(grant.effectiveAt <= clock && (grant.expiresAt > clock || isFrozen(grant.account)), "active grant \(grant.id) is outside its window at \(clock)")
                expect(grant.available > 0 || grant.held > 0, "spent grant \(grant.id) was not retired")
            case .expired, .voided:
                expect(grant.available == 0, "ended grant \(grant.id) still has credits available")
                expect(grant.held > 0, "ended grant \(grant.id) with nothing held was not retired")
            }
            if grant.state == .expired { expect(grant.expiresAt <= clock || isFrozen(grant.account), "grant \(grant.id) expired early") }
        }

        // Draw orders: sorted, active, and summing to the aggregates.
        func checkOrder(_ order: [Int32], _ total: Credits, _ what: String, account: Int32, member: Int32) {
            var sum: Credits = 0
            for (index, slot) in order.enumerated() {
                let grant = grants[Int(slot)]
                expect(grant.isLive && grant.state == .active, "\(what) lists grant \(grant.id) that is not active")
                expect(grant.account == account && grant.member == member, "\(what) lists grant \(grant.id) of another scope")
                if index > 0 { expect(grants[Int(order[index - 1])].drawsBefore(grant), "\(what) is out of draw order") }
                sum += grant.available
            }
            expect(sum == total, "\(what) available \(total) != sum of its grants \(sum)")
        }
        var activeListed = 0
        for (slot, account) in accounts.enumerated() {
            checkOrder(account.poolOrder, account.poolAvailable, "pool of \(account.id)", account: Int32(slot), member: noSlot)
            activeListed += account.poolOrder.count
            expect(account.liveGrants == liveGrantsPerAccount[slot], "account \(account.id) counts \(account.liveGrants) live grants, has \(liveGrantsPerAccount[slot])")
            expect(account.overdrawn >= 0 && account.overdraftHeld >= 0, "account \(account.id) has a negative overdraft")
        }
        for (slot, member) in members.enumerated() where member.isLive {
            checkOrder(member.grantOrder, member.available, "member \(member.id)", account: member.account, member: Int32(slot))
            expect(member.pendingGrants == pendingPerMember[slot], "member \(member.id) counts \(member.pendingGrants) pending grants, has \(pendingPerMember[slot])")
            activeListed += member.grantOrder.count
        }
        expect(activeListed == grants.filter { $0.isLive && $0.state == .active }.count, "an active grant is missing from its draw order")

        // Holds: draws add up, grants' held sums match, nothing outlives its deadline.
        var heldPerGrant = [Credits](repeating: 0, count: grants.count)
        var overdraftHeldPerAccount = [Credits](repeating: 0, count: accounts.count)
        var heldPerAccount = [Credits](repeating: 0, count: accounts.count)
        var heldPerMember = [Credits](repeating: 0, count: members.count)
        var holdsPerAccount = [Int](repeating: 0, count: accounts.count)
        var holdsPerMember = [Int](repeating: 0, count: members.count)
        var heldPerGroup = [Credits](repeating: 0, count: groups.count)
        for hold in holds.values {
            expect(hold.held >= 0 && hold.held == hold.draws.total, "hold \(hold.id) holds \(hold.held) but its draws total \(hold.draws.total)")
            expect(hold.deadline > clock || isFrozen(hold.account), "hold \(hold.id) outlived its deadline \(hold.deadline) at \(clock)")
            for index in 0..<hold.draws.count {
                let draw = hold.draws[index]
                if draw.grant == noSlot {
                    overdraftHeldPerAccount[Int(hold.account)] += draw.amount
                } else {
                    heldPerGrant[Int(draw.grant)] += draw.amount
                    // A draw consumed to zero may name a slot since retired and reused; it is never read again.
                    if draw.amount > 0 { expect(grants[Int(draw.grant)].isLive, "hold \(hold.id) draws on a retired grant") }
                }
            }
            heldPerAccount[Int(hold.account)] += hold.held
            holdsPerAccount[Int(hold.account)] += 1
            let parent = accounts[Int(hold.account)].parent
            if parent != noSlot { heldPerAccount[Int(parent)] += hold.held }
            if hold.member != noSlot {
                heldPerMember[Int(hold.member)] += hold.held
                holdsPerMember[Int(hold.member)] += 1
            }
            expect(hold.member != noSlot || hold.groups.isEmpty, "hold \(hold.id) of the account counts against groups")
            for group in hold.groups {
                guard group >= 0, Int(group) < groups.count, groups[Int(group)].account == hold.account else {
                    expect(false, "hold \(hold.id) counts against group slot \(group), not one of its account's")
                    continue
                }
                heldPerGroup[Int(group)] += hold.held
            }
        }
        var scopedPerAccount = [Int](repeating: 0, count: accounts.count)
        for grant in grants where grant.isLive && grant.isScoped { scopedPerAccount[Int(grant.account)] += 1 }
        for (slot, account) in accounts.enumerated() {
            expect(account.scopedGrants == scopedPerAccount[slot], "account \(account.id) counts \(account.scopedGrants) scoped grants, has \(scopedPerAccount[slot])")
        }
        expect(grantProducts.count == scopedPerAccount.reduce(0, +), "\(grantProducts.count) grants have products, \(scopedPerAccount.reduce(0, +)) live grants are scoped")
        for (id, products) in grantProducts {
            guard let slot = grantSlotByID[id] else {
                expect(false, "grant \(id) has products and is not live")
                continue
            }
            expect(grants[Int(slot)].isScoped && !products.isEmpty && products == products.sorted(), "grant \(id)'s products are out of order or it is not scoped")
        }
        for id in holdRates.keys { expect(holds[HoldKey(id)] != nil, "hold \(id) has metered rates and is not open") }
        // A hold draws only on grants that cover its product.
        for hold in holds.values {
            for draw in hold.draws.all where draw.grant != noSlot && draw.amount > 0 {
                let grant = grants[Int(draw.grant)]
                if grant.isScoped { expect(covers(draw.grant, hold.product), "hold \(hold.id) of \(hold.product) draws on grant \(grant.id), scoped to other products") }
            }
        }
        for (slot, grant) in grants.enumerated() where grant.isLive {
            expect(grant.held == heldPerGrant[slot], "grant \(grant.id) shows \(grant.held) held, its holds draw \(heldPerGrant[slot])")
        }
        for (slot, account) in accounts.enumerated() {
            expect(account.overdraftHeld == overdraftHeldPerAccount[slot], "account \(account.id) overdraft held mismatch")
            expect(account.usage.held == heldPerAccount[slot], "account \(account.id) counts \(account.usage.held) held, holds add to \(heldPerAccount[slot])")
            expect(account.openHolds == holdsPerAccount[slot], "account \(account.id) open hold count mismatch")
            expectWindows(account.windows, account.usage, "account \(account.id)")
        }
        var membersPerGroup = [Int](repeating: 0, count: groups.count)
        for (slot, member) in members.enumerated() where member.isLive {
            expect(member.usage.held == heldPerMember[slot], "member \(member.id) counts \(member.usage.held) held, holds add to \(heldPerMember[slot])")
            expect(member.openHolds == holdsPerMember[slot], "member \(member.id) open hold count mismatch")
            expectWindows(member.windows, member.usage, "member \(member.id)")
            for group in member.groups {
                expect(groups[Int(group)].isLive && groups[Int(group)].account == member.account, "member \(member.id) is in a closed group or another account's")
                membersPerGroup[Int(group)] += 1
            }
        }
        // A group holds what the open holds made while their members were in it hold, closed
        // groups included (their holds resolve against them).
        for (slot, group) in groups.enumerated() {
            expect(group.usage.held == heldPerGroup[slot], "group \(group.id) counts \(group.usage.held) held, its holds add to \(heldPerGroup[slot])")
            expect(group.memberCount == membersPerGroup[slot], "group \(group.id) member count mismatch")
            expectWindows(group.windows, group.usage, "group \(group.id)")
        }
        var liveMembersPerAccount = [Int](repeating: 0, count: accounts.count)
        for (slot, member) in members.enumerated() where member.isLive {
            liveMembersPerAccount[Int(member.account)] += 1
            expect(memberSlots[MemberKey(account: member.account, member: member.id)] == Int32(slot), "member \(member.id) is not indexed")
        }
        expect(memberSlots.count == liveMemberCount, "member index holds \(memberSlots.count), \(liveMemberCount) members live")
        for (slot, account) in accounts.enumerated() {
            expect(account.memberCount == liveMembersPerAccount[slot], "account \(account.id) member count mismatch")
        }
        expect(idempotency.count <= limits.idempotencyKeysMax, "idempotency table over its limit")

        // What each account's members hold, and alerts armed exactly when above their threshold.
        var membersAvailable = [Credits](repeating: 0, count: accounts.count)
        for member in members where member.isLive { membersAvailable[Int(member.account)] += member.available }
        for (slot, account) in accounts.enumerated() {
            expect(account.membersAvailable == membersAvailable[slot], "account \(account.id) counts \(account.membersAvailable) held by members, they hold \(membersAvailable[slot])")
            expect(account.isWatched == (alerts[Int32(slot)] != nil || recharges[Int32(slot)] != nil), "account \(account.id) watch flag is wrong")
        }
        for (slot, states) in alerts {
            expect(states.count <= limits.alertsPerAccountMax, "account \(accounts[Int(slot)].id) has too many alerts")
            for state in states where state.member == noSlot || members[Int(state.member)].isLive {
                let balance = state.member == noSlot ? heldFunds(slot) : members[Int(state.member)].available
                let threshold: Credits
                switch state.rule.threshold {
                case .credits(let credits): threshold = credits
                case .depleted: threshold = 0
                case .percentOfAllotment(let percent): threshold = Credits.percent(percent, of: allotment(slot, member: state.member))
                }
                expect(state.armed == (balance > threshold), "alert \(state.rule.id) of \(accounts[Int(slot)].id) is \(state.armed ? "armed" : "fired") at balance \(balance), threshold \(threshold)")
            }
        }
        for (slot, state) in recharges {
            expect(state.count <= state.rule.maxPerPeriod, "account \(accounts[Int(slot)].id) recharged more than allowed")
        }

        // Subscriptions: an active one is in its current period, with a boundary scheduled;
        // a per-member one lists exactly the account's live members; included grants belong
        // to the account and end with the period.
        for (slot, state) in subscriptions {
            let id = accounts[Int(slot)].id
            expect(state.seats >= 0 && state.seats <= limits.seatsPerAccountMax, "subscription of \(id) has \(state.seats) seats")
            guard let terms = state.terms else { continue }
            expect(state.periodStart <= clock && (clock < state.periodEnd || isFrozen(slot)), "subscription of \(id) is not in its period at \(clock)")
            if terms.scope == .perMember {
                let live = Set((0..<members.count).filter { members[$0].isLive && members[$0].account == slot }.map { Int32($0) })
                expect(Set(state.seatMembers) == live && state.seatMembers.count == live.count, "subscription of \(id) does not list its members as seats")
            } else {
                expect(state.seatMembers.isEmpty, "pooled subscription of \(id) lists seat members")
            }
            for grantID in state.included {
                guard let grant = grantSlotByID[grantID].map({ grants[Int($0)] }) else { continue }
                expect(grant.account == slot && grant.expiresAt == state.periodEnd, "included grant \(grantID) of \(id) is not this period's")
            }
        }
        return violations
    }
}
