import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// Moving an account family between ledgers (Ledger+Move.swift): a family that moves, and
/// moves back, answers every request as a ledger where it never moved would; what it leaves
/// behind is frozen; a transfer is checked whole before anything is taken from it.
@Suite struct FamilyMoveTests {
    static let seedCount = Int(environment("TOLLGATE_PROPERTY_SEEDS") ?? "") ?? 24
    static let stepCount = Int(environment("TOLLGATE_PROPERTY_STEPS") ?? "") ?? 400

    /// Random gate and admin traffic on a family (a root with a child, members, groups, caps,
    /// pooled and member grants, an alert and a recharge, a seat subscription) and on another
    /// account, sent both to a reference ledger and to the one of two shards the family is on,
    /// moving the family between the shards at random. Every answer, balance and event of the
    /// family is the reference's (hold and grant ids translated: the shards allocate from
    /// their own spaces); every ledger keeps its invariants after every step; at the end each
    /// shard's journal replays to it and its snapshot reads back equal.
    @Test(arguments: 0..<seedCount)
    func aMovedFamilyAnswersAsIfItNeverMoved(seed: Int) async {
        let steps = Self.stepCount
        let failures = await OffPool.cpu("move-\(seed)") { var run = MoveRun(seed: UInt64(seed))
            return run.run(steps: steps)
        }
        #expect(failures.isEmpty, "seed \(seed): \(failures.prefix(6).joined(separator: "\n"))")
    }

    @Test func aFrozenFamilyAnswersItsOldKeysAndRefusesEverythingElse() throws {
        var old = makeDriver()
        old.ledger.useIDSpace(tag: 1)
        old.setUp(.createAccount(CreateAccount(account: "child", parent: "acct")))
        old.grant(1_000)
        let first = old.run(.spend(Spend(DecisionRequest(account: "acct", member: "m1", product: "p", quantity: 10))), key: "spend-1")
        let hold = try #require(old.reserve(20, member: "m2").decision?.hold)
        #expect(hold > 1 << 41, "hold ids come from the shard's space")

        #expect(old.run(.moveFamilyOut(account: "child", destination: "s1")).errorCode == .invalidArgument, "only a family's root moves")
        #expect(old.run(.moveFamilyOut(account: "acct", destination: "s1")) == .done)
        #expect(old.ledger.movedFamily(of: "child")?.destination == "s1")

        // A retry of a request decided here gets its first answer; a new one is refused.
        old.advance(microseconds: second)
        #expect(old.run(.spend(Spend(DecisionRequest(account: "acct", member: "m1", product: "p", quantity: 10))), key: "spend-1") == first)
        let refused = old.run(.spend(Spend(DecisionRequest(account: "acct", member: "m1", product: "p", quantity: 10))), key: "spend-2")
        #expect(refused.errorCode == .familyMoved)
        #expect(refused.refusal?.error.subject.contains("s1") == true)
        #expect(old.run(.commit(Commit(HoldReference(account: "acct", hold: hold), amount: .held))).errorCode == .familyMoved)
        #expect(old.run(.createAccount(CreateAccount(account: "late", parent: "acct"))).errorCode == .familyMoved)
        #expect(old.run(.addGrant(AddGrant(account: "child", amount: 5, effectiveAt: old.now))).errorCode == .familyMoved)
        #expect(old.check(DecisionRequest(account: "acct", member: nil, product: "p", quantity: 1)).errorCode == .familyMoved)
        if case .failure(let error) = old.ledger.balance(account: "child", at: old.now) {
            #expect(error.code == .familyMoved)
        } else {
            Issue.record("a frozen account's balance was answered")
        }
        // Its hold's deadline passes without expiring it: the frozen state is the transfer's.
        old.advance(microseconds: 2 * minute)
        #expect(old.ledger.openHoldCount == 1)
        #expect(old.violations.isEmpty, "\(old.violations)")

        // The transfer takes it whole to another shard, open hold included.
        let transfer = try old.ledger.familyTransfer(root: "acct").get()
        var new = LedgerDriver(start: old.now)
        new.ledger.useIDSpace(tag: 2)
        new.setUp(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: new.now))
        #expect(new.run(.moveFamilyIn(account: "acct", transfer: transfer)) == .done)
        #expect(new.violations.isEmpty, "\(new.violations)")
        // Its hold's deadline passed while it moved: it expired on arrival.
        #expect(new.ledger.openHoldCount == 0)
        #expect(new.balance(account: "acct").funds.pool == 990)
        #expect(new.ledger.parent(of: "child") == "acct")
        #expect(new.run(.moveFamilyIn(account: "acct", transfer: transfer)).errorCode == .alreadyExists)
    }

    @Test func aFamilyMovedInIsCheckedWholeAndAMoveCanBeUndone() throws {
        var old = makeDriver()
        old.ledger.useIDSpace(tag: 7)
        old.grant(500)
        let hold = try #require(old.reserve(40, member: "m1").decision?.hold)
        old.setUp(.moveFamilyOut(account: "acct", destination: "s9"))
        let transfer = try old.ledger.familyTransfer(root: "acct").get()

        // The wrong root, and bytes that are not a transfer.
        #expect(old.run(.moveFamilyIn(account: "other", transfer: transfer)).errorCode == .invalidArgument)
        #expect(old.run(.moveFamilyIn(account: "acct", transfer: Array(transfer.dropLast()))).errorCode == .invalidArgument)
        #expect(old.run(.moveFamilyIn(account: "acct", transfer: [])).errorCode == .invalidArgument)

        // Undoing: the transfer taken back in by the shard it left.
        #expect(old.run(.moveFamilyIn(account: "acct", transfer: transfer)) == .done)
        #expect(old.ledger.movedFamily(of: "acct") == nil)
        #expect(old.violations.isEmpty, "\(old.violations)")
        #expect(old.run(.commit(Commit(HoldReference(account: "acct", hold: hold), amount: .credits(30)))).committed?.committed == 30)
        #expect(old.balance(account: "acct").funds.pool == 470)
        #expect(old.ledger.invariantViolations().isEmpty)
        // Its snapshot, tombstone and all, reads back equal.
        var read = try Ledger(snapshot: old.ledger.snapshot())
        read.useIDSpace(tag: 7)
        #expect(read == old.ledger)
    }

    /// Thousands of damaged transfers: each is refused or taken whole, never a trap, and the
    /// ledger keeps its invariants either way.
    @Test func damagedTransfersNeverBreakTheLedger() async {
        let failures = await OffPool.cpu("move-damage") { () -> [String] in
            var source = makeDriver()
            source.ledger.useIDSpace(tag: 3)
            source.setUp(.createAccount(CreateAccount(account: "kid", parent: "acct")))
            source.setUp(.createGroup(account: "acct", group: "g"))
            source.setUp(.addToGroup(account: "acct", group: "g", member: "m1"))
            source.grant(900)
            source.grant(50, scope: .member("m2"))
            _ = source.reserve(30, member: "m1")
            _ = source.run(.reserve(Reserve(DecisionRequest(account: "kid", member: nil, product: "p", quantity: 7), ttlMicroseconds: minute)))
            source.setUp(.moveFamilyOut(account: "acct", destination: "s2"))
            guard case .success(let transfer) = source.ledger.familyTransfer(root: "acct") else { return ["no transfer"] }
            var rng = SeededGenerator(seed: 77)
            var failures: [String] = []
            var accepted = 0
            for round in 0..<3_000 {
                var bytes = transfer
                switch round % 3 {
                case 0:
                    for _ in 0..<Int.random(in: 1...3, using: &rng) { bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= UInt8(1 << Int.random(in: 0..<8, using: &rng)) }
                case 1:
                    bytes = Array(bytes.prefix(Int.random(in: 0..<bytes.count, using: &rng)))
                default:
                    bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
                }
                var target = LedgerDriver(start: source.now)
                target.ledger.useIDSpace(tag: 4)
                target.setUp(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: target.now))
                let answer = target.run(.moveFamilyIn(account: "acct", transfer: bytes))
                if answer == .done { accepted += 1 } else if answer.errorCode != .invalidArgument {
                    failures.append("round \(round): \(answer)")
                }
                target.advance(microseconds: 2 * minute)
                _ = target.run(.spend(Spend(DecisionRequest(account: "acct", member: "m1", product: "p", quantity: 1))))
                failures += target.violations.map { "round \(round): \($0)" }
                if failures.count > 5 { break }
            }
            if accepted == 3_000 { failures.append("no damaged transfer was refused") }
            return failures
        }
        #expect(failures.isEmpty, "\(failures.joined(separator: "\n"))")
    }

    @Test func idSpacesAreDisjointAndAreKeptAcrossSnapshots() throws {
        let tags = ["s0", "s1", "s2", "shard-a", "eu-1"].map(Ledger.idSpaceTag(forShard:))
        #expect(tags.allSatisfy { $0 >= 1 && $0 <= Ledger.idSpaceTagMax })
        #expect(Ledger.idSpaceTag(forShard: "s1") == Ledger.idSpaceTag(forShard: "s1"))
        var driver = makeDriver()
        driver.ledger.useIDSpace(tag: 4_095)
        let grant = driver.grant(100)
        #expect(grant == (4_095 << 41) + 1)
        #expect(grant < 1 << 53, "ids stay exact in JSON numbers")
        let hold = try #require(driver.reserve(10, member: "m1").decision?.hold)
        #expect(hold == (4_095 << 41) + 1)
        var copy = try Ledger(snapshot: driver.ledger.snapshot())
        copy.useIDSpace(tag: 4_095)
        #expect(copy == driver.ledger)
    }

    @Test func importsRefuseIDsAlreadyInUse() throws {
        var a = makeDriver()
        a.grant(100)
        _ = a.reserve(5, member: "m1")
        a.setUp(.moveFamilyOut(account: "acct", destination: "b"))
        let transfer = try a.ledger.familyTransfer(root: "acct").get()
        // A ledger without id spaces allocated the same ids: the import is refused, not merged.
        var b = LedgerDriver()
        b.setUp(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: b.now))
        b.setUp(.createAccount(CreateAccount(account: "mine")))
        b.grant(10, account: "mine")
        let answer = b.run(.moveFamilyIn(account: "acct", transfer: transfer))
        #expect(answer.errorCode == .alreadyExists)
        #expect(b.ledger.hasAccount("acct") == false)
        #expect(b.violations.isEmpty)
    }
}

/// One random run of `aMovedFamilyAnswersAsIfItNeverMoved`.
private struct MoveRun {
    var rng: SeededGenerator
    var reference = LedgerDriver()
    var shards = [LedgerDriver(), LedgerDriver()]
    /// The shard the family is on.
    var holder = 0
    /// Open holds: the reference's id and the id on the shard that made or took it.
    var holds: [(reference: HoldID, shard: HoldID, account: String)] = []
    var failures: [String] = []
    let family = ["org", "team"]

    init(seed: UInt64) {
        rng = SeededGenerator(seed: 5_000 + seed)
        reference.ledger.useIDSpace(tag: 1)
        shards[0].ledger.useIDSpace(tag: 1)
        shards[1].ledger.useIDSpace(tag: 2)
    }

    mutating func everywhere(_ command: Command) {
        _ = reference.run(command)
        for index in shards.indices { _ = shards[index].run(command) }
    }

    mutating func family(_ command: Command, key: String? = nil) -> (reference: Answer, shard: Answer) {
        (reference.run(command, key: key), shards[holder].run(command, key: key))
    }

    mutating func run(steps: Int) -> [String] {
        everywhere(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: reference.now))
        everywhere(.setRate(product: "q", creditsPerUnit: 3, effectiveAt: reference.now))
        _ = family(.createAccount(CreateAccount(account: "org", overage: .overdraft(limit: 40))))
        _ = family(.createAccount(CreateAccount(account: "team", parent: "org")))
        _ = family(.setAccountCap(account: "org", limit: 5_000))
        for member in ["a", "b", "c"] { _ = family(.addMember(account: "org", member: member)) }
        _ = family(.addMember(account: "team", member: "t"))
        _ = family(.createGroup(account: "org", group: "eng"))
        _ = family(.addToGroup(account: "org", group: "eng", member: "a"))
        _ = family(.setGroupCap(account: "org", group: "eng", limit: 600))
        _ = family(.setMemberCap(account: "org", member: "b", limit: 300))
        _ = family(.setSubscription(account: "org", terms: Subscription(creditsPerSeat: 100)))
        _ = family(.setSeats(account: "org", seats: 3, effectiveAt: reference.now))
        _ = family(.setAlert(account: "org", rule: AlertRule(id: "low", threshold: .credits(150))))
        _ = family(.setAutoRecharge(account: "team", rule: AutoRecharge(below: 20, amount: 50, maxPerPeriod: 3)))
        _ = family(.addGrant(AddGrant(account: "team", amount: 200, effectiveAt: reference.now)))
        // Issue 21's rules move with the family: window and soft caps, bounds on open holds,
        // a grant for q only, and holds of a metered product priced at the rates of their reserve.
        everywhere(.setMeteredRate(product: "m", dimension: "in", rate: MeteredRate(credits: 7, per: 1_000), effectiveAt: reference.now))
        everywhere(.setMeteredRate(product: "m", dimension: "out", rate: MeteredRate(credits: 2, per: 1), effectiveAt: reference.now))
        _ = family(.setCap(SetCap(account: "org", target: .member("a"), window: .hour, limit: 200)))
        _ = family(.setCap(SetCap(account: "org", target: .account, window: .day, mode: .soft, limit: 900)))
        _ = family(.setCap(SetCap(account: "org", target: .group("eng"), window: .minute, mode: .hard, limit: 120)))
        _ = family(.setConcurrency(account: "org", target: .eachMember, limit: 3))
        _ = family(.setConcurrency(account: "team", target: .account, limit: 4))
        _ = family(.addGrant(AddGrant(account: "org", amount: 300, effectiveAt: reference.now, source: .promotional, products: ["q"])))
        // Another account on shard 0 only, which moves never touch.
        _ = shards[0].run(.createAccount(CreateAccount(account: "bystander")))
        _ = shards[0].run(.addGrant(AddGrant(account: "bystander", amount: 1_000, effectiveAt: reference.now)))
        compareEvents()

        for step in 0..<steps {
            self.step(step)
            for (name, ledger) in [("reference", reference.ledger), ("shard 0", shards[0].ledger), ("shard 1", shards[1].ledger)] {
                failures += ledger.invariantViolations().map { "step \(step): \(name): \($0)" }
            }
            if !failures.isEmpty { return failures }
        }
        for (index, shard) in shards.enumerated() {
            var replayed = Ledger(startingAt: Fixtures.start)
            replayed.useIDSpace(tag: UInt16(index + 1))
            for entry in shard.journal { _ = replayed.replay(entry.command, key: entry.key, at: entry.at) }
            _ = replayed.advance(to: shard.ledger.clock)
            var live = shard.ledger
            _ = live.takeEvents()
            _ = replayed.takeEvents()
            if replayed != live { failures.append("shard \(index): its journal does not replay to it") }
            do {
                var read = try Ledger(snapshot: shard.ledger.snapshot())
                read.useIDSpace(tag: UInt16(index + 1))
                if read != live { failures.append("shard \(index): its snapshot does not read back equal") }
            } catch {
                failures.append("shard \(index): \(error)")
            }
        }
        return failures
    }

    mutating func step(_ step: Int) {
        let account = family.randomElement(using: &rng)!
        let member: String? = account == "org" ? [nil, "a", "b", "c"].randomElement(using: &rng)! : [nil, "t"].randomElement(using: &rng)!
        let request = DecisionRequest(account: account, member: member, product: ["p", "q"].randomElement(using: &rng)!, quantity: .random(in: 1...60, using: &rng))
        switch Int.random(in: 0..<100, using: &rng) {
        case 0..<25:
            let ttl = Int64.random(in: 1...90, using: &rng) * second
            let (r, s) = family(.reserve(Reserve(request, ttlMicroseconds: ttl)))
            if let rh = r.decision?.hold, let sh = s.decision?.hold { holds.append((rh, sh, account)) }
            compare(step, "reserve", r, s)
        case 25..<33:
            let (r, s) = family(.spend(Spend(request)))
            compare(step, "spend", r, s)
        case 33..<40:
            let metered = MeteredRequest(
                account: account, member: member, product: "m",
                dimensions: [DimensionQuantity("in", .random(in: 0...9_000, using: &rng)), DimensionQuantity("out", .random(in: 0...20, using: &rng))])
            if Bool.random(using: &rng) {
                let (r, s) = family(.reserveMetered(metered, ttlMicroseconds: Int64.random(in: 1...90, using: &rng) * second))
                if let rh = r.decision?.hold, let sh = s.decision?.hold { holds.append((rh, sh, account)) }
                compare(step, "reserve metered", r, s)
            } else if !holds.isEmpty, Bool.random(using: &rng) {
                let index = Int.random(in: 0..<holds.count, using: &rng)
                let hold = holds[index]
                let final = Bool.random(using: &rng)
                let r = reference.run(.commitMetered(hold: HoldReference(account: hold.account, hold: hold.reference), dimensions: metered.dimensions, isFinal: final))
                let s = shards[holder].run(.commitMetered(hold: HoldReference(account: hold.account, hold: hold.shard), dimensions: metered.dimensions, isFinal: final))
                if final && r.refusal == nil { holds.remove(at: index) }
                compare(step, "commit metered", r, s)
            } else {
                let (r, s) = family(.spendMetered(metered))
                compare(step, "spend metered", r, s)
            }
        case 40..<55 where !holds.isEmpty:
            let index = Int.random(in: 0..<holds.count, using: &rng)
            let hold = holds[index]
            let final = Bool.random(using: &rng)
            let amount: Commit.Amount = [.held, .credits(.random(in: 0...50, using: &rng)), .quantity(.random(in: 0...20, using: &rng))].randomElement(using: &rng)!
            let r = reference.run(.commit(Commit(HoldReference(account: hold.account, hold: hold.reference), amount: amount, isFinal: final)))
            let s = shards[holder].run(.commit(Commit(HoldReference(account: hold.account, hold: hold.shard), amount: amount, isFinal: final)))
            if final || r.refusal != nil { holds.remove(at: index) }
            compare(step, "commit", r, s)
        case 55..<62 where !holds.isEmpty:
            let hold = holds.remove(at: Int.random(in: 0..<holds.count, using: &rng))
            let r = reference.run(.release(HoldReference(account: hold.account, hold: hold.reference)))
            let s = shards[holder].run(.release(HoldReference(account: hold.account, hold: hold.shard)))
            compare(step, "release", r, s)
        case 62..<66 where !holds.isEmpty:
            let hold = holds[Int.random(in: 0..<holds.count, using: &rng)]
            let ttl = Int64.random(in: 1...60, using: &rng) * second
            let r = reference.run(.extend(Extend(HoldReference(account: hold.account, hold: hold.reference), ttlMicroseconds: ttl)))
            let s = shards[holder].run(.extend(Extend(HoldReference(account: hold.account, hold: hold.shard), ttlMicroseconds: ttl)))
            compare(step, "extend", r, s)
        case 66..<72:
            let scope: GrantScope = member.map { .member($0) } ?? .pool
            let expires = Bool.random(using: &rng) ? Instant.distantFuture : reference.now.adding(microseconds: .random(in: 1...600, using: &rng) * second)
            let effective = reference.now.adding(microseconds: Bool.random(using: &rng) ? 0 : .random(in: 1...120, using: &rng) * second)
            let (r, s) = family(.addGrant(AddGrant(account: account, scope: scope, amount: .random(in: 1...400, using: &rng), effectiveAt: effective, expiresAt: expires)))
            compare(step, "grant", r, s)
        case 72..<75:
            let (r, s) = family(.setSeats(account: "org", seats: .random(in: 1...5, using: &rng), effectiveAt: reference.now.adding(microseconds: .random(in: 0...3_600, using: &rng) * second)))
            compare(step, "seats", r, s)
        case 75..<80:
            let r = reference.check(request)
            let s = shards[holder].check(request)
            compare(step, "check", r, s)
        case 80..<84:
            move(step)
        default:
            let by = Int64.random(in: 0...(Bool.random(using: &rng) ? 30 : 4_000), using: &rng) * second
            reference.advance(microseconds: by)
            for index in shards.indices { shards[index].advance(microseconds: by) }
            for name in family {
                for who in name == "org" ? [nil, "a", "b"] : [nil, "t"] {
                    compareBalance(step, name, who)
                }
            }
        }
        compareEvents()
    }

    /// Out of the holder, into the other shard. Retries of keys decided before the move are
    /// answered by the old shard; a new request there is refused as moved.
    mutating func move(_ step: Int) {
        let other = 1 - holder
        let out = shards[holder].run(.moveFamilyOut(account: "org", destination: "s\(other)"))
        guard out == .done else { return failures.append("step \(step): move out answered \(out)") }
        let refused = shards[holder].run(.spend(Spend(DecisionRequest(account: "team", member: nil, product: "p", quantity: 1))))
        if refused.errorCode != .familyMoved { failures.append("step \(step): the old shard answered \(refused)") }
        switch shards[holder].ledger.familyTransfer(root: "org") {
        case .failure(let error): failures.append("step \(step): transfer: \(error)")
        case .success(let transfer):
            let answer = shards[other].run(.moveFamilyIn(account: "org", transfer: transfer))
            if answer != .done { failures.append("step \(step): move in answered \(answer)") }
        }
        holder = other
        // Grants the family makes next are younger than those it brought (a move takes time):
        // draw order breaks ties by age, then by id, and ids here come from another space.
        reference.advance(microseconds: 1)
        for index in shards.indices { shards[index].advance(microseconds: 1) }
    }

    mutating func compare(_ step: Int, _ what: String, _ reference: Answer, _ shard: Answer) {
        if normalized(reference) != normalized(shard) {
            failures.append("step \(step): \(what): the reference answered \(reference), the shard \(shard)")
        }
    }

    func normalized(_ answer: Answer) -> Answer {
        switch answer {
        case .decision(var decision):
            decision.hold = decision.hold.map { _ in 0 }
            return .decision(decision)
        case .committed(var result):
            result.hold = 0
            return .committed(result)
        case .released(var result):
            result.hold = 0
            return .released(result)
        case .extended(var result):
            result.hold = 0
            return .extended(result)
        case .grantAdded: return .grantAdded(0)
        case .refused(var refusal) where [.holdExpired, .holdCommitted, .holdReleased, .unknownHold].contains(refusal.error.code):
            refusal.error.subject = ""
            return .refused(refusal)
        case .refused(var refusal) where refusal.error.code == .invalidArgument && refusal.error.subject.hasPrefix("hold "):
            // A metered hold committed by quantity, or a plain one by dimensions: the subject names the hold's id.
            refusal.error.subject = refusal.error.subject.split(separator: " ").dropFirst(2).joined(separator: " ")
            return .refused(refusal)
        default: return answer
        }
    }

    mutating func compareBalance(_ step: Int, _ account: String, _ member: String?) {
        guard case .success(var r) = reference.ledger.balance(account: account, member: member, at: reference.now),
            case .success(var s) = shards[holder].ledger.balance(account: account, member: member, at: shards[holder].now)
        else { return failures.append("step \(step): no balance of \(account)/\(member ?? "-")") }
        // Burn windows stay behind (they are not part of the decision); grant ids differ.
        r.burn = BurnRate(lastMinute: 0, lastHour: 0)
        s.burn = r.burn
        for index in r.grants.indices { r.grants[index].id = 0 }
        for index in s.grants.indices { s.grants[index].id = 0 }
        if r != s { failures.append("step \(step): balance of \(account)/\(member ?? "-"): reference \(r), shard \(s)") }
    }

    /// The family's events come from the shard it is on, the same as the reference's.
    mutating func compareEvents() {
        func kinds(_ events: [LedgerEvent]) -> [String] {
            events.map { event in
                switch event.kind {
                case .recharged(_, let amount, let balance): "\(event.account)/\(event.member ?? "-") recharged \(amount) to \(balance) at \(event.at)"
                default: "\(event.account)/\(event.member ?? "-") \(event.kind) at \(event.at)"
                }
            }
        }
        let r = kinds(reference.ledger.takeEvents())
        let s = kinds(shards[holder].ledger.takeEvents())
        let stray = shards[1 - holder].ledger.takeEvents()
        if r != s { failures.append("events: reference \(r), shard \(s)") }
        if !stray.isEmpty { failures.append("events from the shard the family left: \(stray)") }
    }
}
