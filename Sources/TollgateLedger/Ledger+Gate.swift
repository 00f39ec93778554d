/// The accounts and member one decision runs through.
struct Chain: Hashable, Sendable {
    var account: Int32
    /// `noSlot` for a request made for the account as a whole.
    var member: Int32
    /// `noSlot` when the account has no parent.
    var parent: Int32
    /// The groups the decision counts against: the member's groups now for a new decision, the
    /// groups it was in when the hold was made for anything done to a hold.
    var groups: [Int32] = []
}

/// A request that has been resolved and priced, with the headroom before it.
struct PricedRequest: Sendable {
    var chain: Chain
    var creditsPerUnit: Credits
    var cost: Credits
    var headroom: Headroom
}

extension Headroom {
    func after(spending cost: Credits) -> Headroom {
        var result = self
        result.member = member.map { $0.addingClamped(-cost) }
        result.group = group.map { $0.addingClamped(-cost) }
        result.account = account.map { $0.addingClamped(-cost) }
        result.parent = parent.map { $0.addingClamped(-cost) }
        result.funds = funds - cost
        return result
    }
}

extension Ledger {
    // MARK: - Reads

    /// Answers whether the request would be allowed now, holding nothing.
    public mutating func check(_ request: DecisionRequest, at instant: Instant) -> Answer {
        let now = advance(to: instant)
        switch price(request, at: now) {
        case .failure(let refusal):
            return .refused(refusal)
        case .success(let priced):
            if let error = refusalFor(priced.cost, priced.headroom, priced.chain, at: now) {
                return .refused(Refusal(error, headroom: priced.headroom))
            }
            return .decision(
                Decision(
                    hold: nil, cost: priced.cost, creditsPerUnit: priced.creditsPerUnit, deadline: nil,
                    headroom: priced.headroom.after(spending: priced.cost)))
        }
    }

    // MARK: - Reserve and spend

    mutating func reserve(_ reserve: Reserve, at now: Instant) -> Answer {
        guard reserve.ttlMicroseconds > 0, reserve.ttlMicroseconds <= limits.holdTTLMicrosecondsMax else {
            return .refused(Refusal(invalidTTL()))
        }
        let priced: PricedRequest
        switch price(reserve.request, at: now) {
        case .failure(let refusal): return .refused(refusal)
        case .success(let value): priced = value
        }
        return holdPriced(priced, product: reserve.request.product, quantity: reserve.request.quantity, ttl: reserve.ttlMicroseconds, at: now)
    }

    /// A reserve that has been priced: the checks, the draw and the hold.
    @inline(__always)
    mutating func holdPriced(_ priced: PricedRequest, product: String, quantity: Int64, ttl: Int64, at now: Instant) -> Answer {
        let chain = priced.chain
        if let error = refusalFor(priced.cost, priced.headroom, chain, at: now) {
            return .refused(Refusal(error, headroom: priced.headroom))
        }
        if let error = concurrencyRefusal(chain) {
            return .refused(Refusal(error, headroom: priced.headroom))
        }
        guard holds.count < limits.holdsMax else {
            return .refused(Refusal(LedgerError(.limitReached, level: .ledger, subject: "open holds"), headroom: priced.headroom))
        }
        guard accounts[Int(chain.account)].openHolds < limits.holdsPerAccountMax else {
            return .refused(
                Refusal(LedgerError(.limitReached, level: .account, subject: "open holds per account"), headroom: priced.headroom))
        }

        guard nextHoldID < idSpaceEnd else {
            return .refused(Refusal(LedgerError(.limitReached, level: .ledger, subject: "hold ids of this shard's id space"), headroom: priced.headroom))
        }
        let id = nextHoldID
        nextHoldID += 1
        let draws = drawFunds(chain, priced.cost, holding: true, product: product)
        addUsage(chain, held: priced.cost, consumed: 0, at: now)
        let deadline = now.adding(microseconds: ttl)
        holds.insert(HoldRecord(
            id: id, account: chain.account, member: chain.member, product: product,
            quantity: quantity, creditsPerUnit: priced.creditsPerUnit, original: priced.cost,
            held: priced.cost, createdAt: now, deadline: deadline, draws: draws, groups: chain.groups))
        accounts[Int(chain.account)].openHolds += 1
        if chain.member != noSlot { members[Int(chain.member)].openHolds += 1 }
        schedule(.holdDeadline(id), at: deadline)
        return .decision(
            Decision(
                hold: id, cost: priced.cost, creditsPerUnit: priced.creditsPerUnit, deadline: deadline,
                headroom: priced.headroom.after(spending: priced.cost)))
    }

    mutating func spend(_ spend: Spend, at now: Instant) -> Answer {
        let priced: PricedRequest
        switch price(spend.request, at: now) {
        case .failure(let refusal): return .refused(refusal)
        case .success(let value): priced = value
        }
        return spendPriced(priced, product: spend.request.product, at: now)
    }

    /// A spend that has been priced: the checks and the draw.
    @inline(__always)
    mutating func spendPriced(_ priced: PricedRequest, product: String, at now: Instant) -> Answer {
        if let error = refusalFor(priced.cost, priced.headroom, priced.chain, at: now) {
            return .refused(Refusal(error, headroom: priced.headroom))
        }
        _ = drawFunds(priced.chain, priced.cost, holding: false, product: product)
        addUsage(priced.chain, held: 0, consumed: priced.cost, at: now)
        return .decision(
            Decision(
                hold: nil, cost: priced.cost, creditsPerUnit: priced.creditsPerUnit, deadline: nil,
                headroom: priced.headroom.after(spending: priced.cost)))
    }

    // MARK: - Commit, release, extend

    mutating func commit(_ commit: Commit, at now: Instant) -> Answer {
        let slot: Int32
        switch openHold(commit.hold) {
        case .failure(let error): return .refused(Refusal(error))
        case .success(let value): slot = value
        }
        // The record is moved out of its slot while the commit works on it (no copy of its
        // draws and groups), and moved back unless the commit resolves the hold.
        var hold = holds.take(slot: slot)
        let chain = chain(of: hold)
        switch self.commit(commit, to: &hold, chain, at: now) {
        case .failure(let refusal):
            holds.put(hold, slot: slot)
            return .refused(refusal)
        case .success(let actual):
            let returned = commit.isFinal ? hold.held : 0
            if commit.isFinal {
                finish(hold, as: .committed, at: now)
            } else {
                holds.put(hold, slot: slot)
            }
            return .committed(
                CommitResult(
                    hold: hold.id, committed: actual, returned: returned, stillHeld: commit.isFinal ? 0 : hold.held,
                    headroom: headroom(chain, at: now, product: hold.product)))
        }
    }

    /// The commit itself, on a hold taken out of its slot: the credits it commits, or why it
    /// is refused (and then the hold is unchanged).
    private mutating func commit(_ commit: Commit, to hold: inout HoldRecord, _ chain: Chain, at now: Instant) -> Result<Credits, Refusal> {
        let actual: Credits
        switch commit.amount {
        case .held:
            actual = hold.held
        case .quantity(let quantity):
            if rulesInUse.value, holdRates[hold.id] != nil {
                return .failure(Refusal(LedgerError(.invalidArgument, level: .request, subject: "hold \(hold.id) is metered: commit it by its dimensions")))
            }
            guard quantity >= 0, quantity <= limits.quantityMax else {
                return .failure(Refusal(invalidQuantity(allowZero: true)))
            }
            let (credits, overflow) = hold.creditsPerUnit.multipliedReportingOverflow(by: quantity)
            guard !overflow, credits <= limits.creditsMax else { return .failure(Refusal(costOutOfRange())) }
            actual = credits
        case .credits(let credits):
            if let error = validateCredits(credits, "commit amount", allowZero: true) { return .failure(Refusal(error)) }
            actual = credits
        }
        if actual <= hold.held {
            consume(actual, from: &hold)
            addUsage(chain, held: -actual, consumed: actual, at: now)
        } else {
            // Above the hold: the difference is a new draw, under the caps and the overage policy.
            let excess = actual - hold.held
            let headroom = self.headroom(chain, at: now, product: hold.product)
            if let error = refusalFor(excess, headroom, chain, at: now) {
                let finishAllowed = error.code == .insufficientFunds && finishAllows(hold, committing: actual)
                if !finishAllowed { return .failure(Refusal(error, headroom: headroom)) }
            }
            let held = hold.held
            consume(held, from: &hold)
            _ = drawFunds(chain, excess, holding: false, product: hold.product)
            addUsage(chain, held: -held, consumed: actual, at: now)
        }
        hold.committed = hold.committed.addingClamped(actual)
        precondition(hold.held >= 0 && hold.held == hold.draws.total, "a hold's draws must add up to what it holds")
        return .success(actual)
    }

    mutating func release(_ reference: HoldReference, at now: Instant) -> Answer {
        let slot: Int32
        switch openHold(reference) {
        case .failure(let error): return .refused(Refusal(error))
        case .success(let value): slot = value
        }
        let hold = holds.take(slot: slot)
        finish(hold, as: .released, at: now)
        return .released(ReleaseResult(hold: hold.id, released: hold.held, headroom: headroom(chain(of: hold), at: now, product: hold.product)))
    }

    mutating func extend(_ extend: Extend, at now: Instant) -> Answer {
        guard extend.ttlMicroseconds > 0, extend.ttlMicroseconds <= limits.holdTTLMicrosecondsMax else {
            return .refused(Refusal(invalidTTL()))
        }
        switch openHold(extend.hold) {
        case .failure(let error):
            return .refused(Refusal(error))
        case .success(let slot):
            let deadline = now.adding(microseconds: extend.ttlMicroseconds)
            holds[slot: slot].deadline = deadline
            let hold = holds[slot: slot]
            schedule(.holdDeadline(hold.id), at: deadline)
            return .extended(ExtendResult(hold: hold.id, deadline: deadline, headroom: headroom(chain(of: hold), at: now, product: hold.product)))
        }
    }

    /// Under `finish(percent)`, a commit may go past its hold by up to that share of the hold
    /// with no funds behind it.
    func finishAllows(_ hold: HoldRecord, committing actual: Credits) -> Bool {
        guard case .finish(let percent) = accounts[Int(hold.account)].overage else { return false }
        let beyondHold = hold.committed.addingClamped(actual) - hold.original
        return beyondHold <= hold.original * percent / 100
    }

    // MARK: - Resolving and pricing

    /// The slot of the open hold a request names, or why there is none.
    func openHold(_ reference: HoldReference) -> Result<Int32, LedgerError> {
        guard let account = accountSlots[HashedString(reference.account)] else {
            return .failure(LedgerError(.unknownAccount, level: .account, subject: reference.account))
        }
        if let slot = holds.slot(of: HoldKey(reference.hold)), holds[slot: slot].account == account {
            return .success(slot)
        }
        if let resolved = resolvedHolds[reference.hold], resolved.account == account {
            return .failure(LedgerError(resolved.resolution.error, level: .request, subject: String(reference.hold)))
        }
        return .failure(LedgerError(.unknownHold, level: .request, subject: String(reference.hold)))
    }

    /// A hold counts against the groups its member was in when it was made, whatever has
    /// happened to the membership since, and against the parent it had then (SET_PARENT is
    /// refused while an account has open holds).
    func chain(of hold: HoldRecord) -> Chain {
        Chain(account: hold.account, member: hold.member, parent: accounts[Int(hold.account)].parent, groups: hold.groups)
    }

    func resolveChain(account: String, member: String?) -> Result<Chain, LedgerError> {
        guard let accountSlot = accountSlots[HashedString(account)] else {
            return .failure(LedgerError(.unknownAccount, level: .account, subject: account))
        }
        if !movedOut.isEmpty, let moved = movedOut[accountSlot] { return .failure(familyMovedError(account, moved)) }
        var memberSlot = noSlot
        var groups: [Int32] = []
        if let member {
            guard let slot = memberSlots[MemberKey(account: accountSlot, member: member)] else {
                return .failure(LedgerError(.unknownMember, level: .member, subject: member))
            }
            memberSlot = slot
            groups = members[Int(slot)].groups
        }
        return .success(Chain(account: accountSlot, member: memberSlot, parent: accounts[Int(accountSlot)].parent, groups: groups))
    }

    /// The rate in force for a product at an instant: the account's override if it has one,
    /// otherwise the rate card's.
    func rate(_ product: String, account: Int32, at now: Instant) -> Credits? {
        let key = HashedString(product)
        if !accounts[Int(account)].rateOverrides.isEmpty,
            let rate = accounts[Int(account)].rateOverrides[key]?.version(at: now)?.creditsPerUnit
        {
            return rate
        }
        return rates[key]?.version(at: now)?.creditsPerUnit
    }

    func price(_ request: DecisionRequest, at now: Instant) -> Result<PricedRequest, Refusal> {
        guard request.quantity > 0, request.quantity <= limits.quantityMax else {
            return .failure(Refusal(invalidQuantity()))
        }
        let chain: Chain
        switch resolveChain(account: request.account, member: request.member) {
        case .failure(let error): return .failure(Refusal(error))
        case .success(let value): chain = value
        }
        let headroom = self.headroom(chain, at: now, product: request.product)
        guard let rate = rate(request.product, account: chain.account, at: now) else {
            return .failure(Refusal(LedgerError(.unknownProduct, level: .request, subject: request.product), headroom: headroom))
        }
        let (cost, overflow) = rate.multipliedReportingOverflow(by: request.quantity)
        guard !overflow, cost <= limits.creditsMax else {
            return .failure(Refusal(costOutOfRange(), headroom: headroom))
        }
        return .success(PricedRequest(chain: chain, creditsPerUnit: rate, cost: cost, headroom: headroom))
    }

    /// The headroom for a decision on `product`: the funds leave out grants scoped to other
    /// products (Ledger+Scopes.swift).
    @inline(__always)
    func headroom(_ chain: Chain, at now: Instant, product: String) -> Headroom {
        var result = headroom(chain, at: now)
        if rulesInUse.value, chainHasScopedGrants(chain) { result.funds -= availableElsewhere(chain, product) }
        return result
    }

    /// The headroom at every level of the chain at `now`, over all its grants.
    func headroom(_ chain: Chain, at now: Instant) -> Headroom {
        let account = Int(chain.account)
        var result = Headroom(funds: 0)
        var funds = accounts[account].poolAvailable + accounts[account].overdraftRemaining()
        if chain.member != noSlot {
            let member = Int(chain.member)
            result.member = members[member].usage.headroom(limit: members[member].capLimit, at: now)
            if rulesInUse.value, !members[member].windows.isEmpty { result.member = Self.tightest(members[member].windows, result.member, at: now) }
            funds += members[member].available
            for group in chain.groups {
                var headroom = groups[Int(group)].usage.headroom(limit: groups[Int(group)].capLimit, at: now)
                if rulesInUse.value, !groups[Int(group)].windows.isEmpty { headroom = Self.tightest(groups[Int(group)].windows, headroom, at: now) }
                if let headroom, headroom < (result.group ?? Credits.max) {
                    result.group = headroom
                    result.groupID = groups[Int(group)].id
                }
            }
        }
        result.account = accounts[account].usage.headroom(limit: accounts[account].capLimit, at: now)
        if rulesInUse.value, !accounts[account].windows.isEmpty { result.account = Self.tightest(accounts[account].windows, result.account, at: now) }
        if chain.parent != noSlot {
            let parent = Int(chain.parent)
            result.parent = accounts[parent].usage.headroom(limit: accounts[parent].capLimit, at: now)
            if rulesInUse.value, !accounts[parent].windows.isEmpty { result.parent = Self.tightest(accounts[parent].windows, result.parent, at: now) }
            funds += accounts[parent].poolAvailable
        }
        result.funds = funds
        return result
    }

    /// The first level, walking member, groups, account, parent and then funds, that cannot
    /// take `cost` more.
    func refusalFor(_ cost: Credits, _ headroom: Headroom, _ chain: Chain, at now: Instant) -> LedgerError? {
        if let member = headroom.member, member < cost {
            let record = members[Int(chain.member)]
            return LedgerError(
                .memberCap, level: .member, subject: capSubject(record.id, capLimit: record.capLimit, usage: record.usage, windows: record.windows, cost: cost, at: now))
        }
        if let group = headroom.group, group < cost {
            let id = headroom.groupID ?? ""
            var subject = id
            if let slot = chain.groups.first(where: { groups[Int($0)].id == id }) {
                let record = groups[Int(slot)]
                subject = capSubject(id, capLimit: record.capLimit, usage: record.usage, windows: record.windows, cost: cost, at: now)
            }
            return LedgerError(.groupCap, level: .group, subject: subject)
        }
        if let account = headroom.account, account < cost {
            let record = accounts[Int(chain.account)]
            return LedgerError(
                .accountCap, level: .account, subject: capSubject(record.id, capLimit: record.capLimit, usage: record.usage, windows: record.windows, cost: cost, at: now))
        }
        if let parent = headroom.parent, parent < cost {
            let record = accounts[Int(chain.parent)]
            return LedgerError(
                .parentCap, level: .parent, subject: capSubject(record.id, capLimit: record.capLimit, usage: record.usage, windows: record.windows, cost: cost, at: now))
        }
        if headroom.funds < cost {
            return LedgerError(.insufficientFunds, level: .account, subject: accounts[Int(chain.account)].id)
        }
        return nil
    }

    func invalidQuantity(allowZero: Bool = false) -> LedgerError {
        LedgerError(.amountOutOfRange, level: .request, subject: "quantity must be \(allowZero ? 0 : 1) to \(limits.quantityMax)")
    }

    func invalidTTL() -> LedgerError {
        LedgerError(.invalidArgument, level: .request, subject: "ttl must be 1 to \(limits.holdTTLMicrosecondsMax) microseconds")
    }

    func costOutOfRange() -> LedgerError {
        LedgerError(.amountOutOfRange, level: .request, subject: "cost exceeds \(limits.creditsMax) credits")
    }
}
