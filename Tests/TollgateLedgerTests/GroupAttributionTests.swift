import Testing
import TollgateLedger
import TollgateLedgerTestSupport

/// A group's consumption is what was decided for its members while they were in it (issue 23):
/// membership changes never change what a group has spent.
@Suite struct GroupAttributionTests {
    /// Account `corp`, group `research` capped at 200 a period, members a1, a2, a3.
    func financeDriver() -> LedgerDriver {
        var driver = LedgerDriver()
        driver.setUp(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: driver.now))
        driver.setUp(.createAccount(CreateAccount(account: "corp")))
        driver.setUp(.addGrant(AddGrant(account: "corp", amount: 10_000, effectiveAt: driver.now)))
        driver.setUp(.createGroup(account: "corp", group: "research"))
        driver.setUp(.setGroupCap(account: "corp", group: "research", limit: 200))
        for member in ["a1", "a2", "a3"] {
            driver.setUp(.addMember(account: "corp", member: member))
            driver.setUp(.addToGroup(account: "corp", group: "research", member: member))
        }
        return driver
    }

    func research(_ driver: LedgerDriver, group: String = "research") -> LevelUsage? {
        driver.ledger.groupUsage(account: "corp", group: group, at: driver.now)
    }

    /// The report: leaving gave back 50, re-joining imported 11 spent elsewhere.
    @Test func leavingDoesNotGiveBackAndRejoiningDoesNotImport() throws {
        var driver = financeDriver()
        _ = try #require(driver.spend(50, member: "a2", account: "corp").decision)
        _ = try #require(driver.spend(150, member: "a1", account: "corp").decision)
        #expect(research(driver)?.consumed == 200)
        driver.setUp(.removeFromGroup(account: "corp", group: "research", member: "a2"))
        #expect(research(driver)?.consumed == 200)
        let refusal = try #require(driver.spend(1, member: "a1", account: "corp").refusal)
        #expect(refusal.error == LedgerError(.groupCap, level: .group, subject: "research"))
        // a2 spends outside the group, then comes back: research stays at 200 of 200.
        _ = try #require(driver.spend(11, member: "a2", account: "corp").decision)
        driver.setUp(.addToGroup(account: "corp", group: "research", member: "a2"))
        #expect(research(driver)?.consumed == 200)
        #expect(research(driver)?.headroom == 0)
        #expect(driver.spend(1, member: "a2", account: "corp").errorCode == .groupCap)
        #expect(driver.violations.isEmpty)
    }

    @Test func aNewGroupStartsAtZero() throws {
        var driver = financeDriver()
        _ = try #require(driver.spend(181, member: "a1", account: "corp").decision)
        _ = try #require(driver.reserve(7, member: "a1", account: "corp").decision)
        driver.setUp(.createGroup(account: "corp", group: "platform"))
        driver.setUp(.setGroupCap(account: "corp", group: "platform", limit: 100))
        driver.setUp(.addToGroup(account: "corp", group: "platform", member: "a1"))
        let platform = try #require(research(driver, group: "platform"))
        #expect(platform.consumed == 0 && platform.held == 0 && platform.headroom == 100)
        // A deleted group's name starts again at 0 too.
        driver.setUp(.deleteGroup(account: "corp", group: "research"))
        driver.setUp(.createGroup(account: "corp", group: "research"))
        #expect(research(driver)?.consumed == 0)
        #expect(driver.violations.isEmpty)
    }

    @Test func aHoldCountsAgainstTheGroupsItWasMadeInUntilResolved() throws {
        var driver = financeDriver()
        driver.setUp(.createGroup(account: "corp", group: "sales"))
        let inResearch = try #require(driver.reserve(60, member: "a2", account: "corp").decision?.hold)
        driver.setUp(.removeFromGroup(account: "corp", group: "research", member: "a2"))
        driver.setUp(.addToGroup(account: "corp", group: "sales", member: "a2"))
        // The hold still counts in research, not in sales.
        #expect(research(driver)?.held == 60)
        #expect(research(driver, group: "sales")?.held == 0)
        let notInResearch = try #require(driver.reserve(30, member: "a2", account: "corp").decision?.hold)
        #expect(research(driver)?.held == 60)
        #expect(research(driver, group: "sales")?.held == 30)
        // Committing moves the held credits to consumed in the group the hold was made in.
        _ = try #require(driver.commit(inResearch, .credits(45), account: "corp").committed)
        #expect(research(driver)?.held == 0 && research(driver)?.consumed == 45)
        #expect(research(driver, group: "sales")?.consumed == 0)
        _ = try #require(driver.commit(notInResearch, account: "corp").committed)
        #expect(research(driver)?.consumed == 45)
        #expect(research(driver, group: "sales")?.consumed == 30)
        #expect(driver.violations.isEmpty)
    }

    @Test func aCommitAboveItsHoldIsCheckedAgainstTheHoldsGroups() throws {
        var driver = financeDriver()
        driver.setUp(.setOverage(account: "corp", policy: .finish(percent: 100)))
        _ = try #require(driver.spend(150, member: "a1", account: "corp").decision)
        let hold = try #require(driver.reserve(40, member: "a2", account: "corp").decision?.hold)
        driver.setUp(.removeFromGroup(account: "corp", group: "research", member: "a2"))
        // 150 consumed + 40 held leaves research 10: the excess of 20 would take it to 210.
        let refusal = try #require(driver.commit(hold, .credits(60), account: "corp").refusal)
        #expect(refusal.error == LedgerError(.groupCap, level: .group, subject: "research"))
        let result = try #require(driver.commit(hold, .credits(50), account: "corp").committed)
        #expect(result.committed == 50)
        #expect(research(driver)?.consumed == 200)
        #expect(driver.violations.isEmpty)
    }

    @Test func deletingAGroupWithOpenHoldsLetsThemResolve() throws {
        var driver = financeDriver()
        let committed = try #require(driver.reserve(30, member: "a1", account: "corp").decision?.hold)
        let released = try #require(driver.reserve(20, member: "a3", account: "corp").decision?.hold)
        #expect(driver.run(.deleteGroup(account: "corp", group: "research")) == .done)
        #expect(driver.violations.isEmpty)
        #expect(research(driver) == nil)
        // a1 and a3 are in no group now: the cap of the deleted group no longer applies.
        _ = try #require(driver.spend(500, member: "a1", account: "corp").decision)
        _ = try #require(driver.commit(committed, account: "corp").committed)
        _ = try #require(driver.release(released, account: "corp").released)
        #expect(driver.violations.isEmpty)
        #expect(driver.ledger.openHoldCount == 0)
    }

    /// PROTOCOL.md §5.3: an allowed CHECK reports the headroom as if the cost were taken (as
    /// RESERVE and SPEND do); a refusal reports it as it is.
    @Test func checkReportsTheHeadroomAsIfTheCostWereTaken() throws {
        var driver = financeDriver()
        _ = try #require(driver.spend(170, member: "a1", account: "corp").decision)
        let allowed = try #require(driver.check(DecisionRequest(account: "corp", member: "a2", product: "p", quantity: 10)).decision)
        #expect(allowed.headroom.group == 20 && allowed.headroom.groupID == "research")
        #expect(allowed.headroom.funds == 10_000 - 170 - 10)
        #expect(research(driver)?.consumed == 170)
        let refused = try #require(driver.check(DecisionRequest(account: "corp", member: "a2", product: "p", quantity: 31)).refusal)
        #expect(refused.error.code == .groupCap && refused.headroom?.group == 30)
    }

    @Test func removeFromGroupOfAMemberNotInItSaysSo() {
        var driver = financeDriver()
        driver.setUp(.createGroup(account: "corp", group: "sales"))
        let answer = driver.run(.removeFromGroup(account: "corp", group: "sales", member: "a1"))
        #expect(answer.refusal?.error == LedgerError(.notInGroup, level: .group, subject: "a1 is not in sales"))
        #expect(driver.run(.removeFromGroup(account: "corp", group: "ghost", member: "a1")).errorCode == .unknownGroup)
        #expect(driver.run(.removeFromGroup(account: "corp", group: "sales", member: "ghost")).errorCode == .unknownMember)
    }

    /// Checkpoints and replay keep which groups each open hold counts against.
    @Test func snapshotAndReplayKeepTheAttribution() throws {
        var driver = financeDriver()
        driver.setUp(.createGroup(account: "corp", group: "sales"))
        let hold = try #require(driver.reserve(60, member: "a2", account: "corp").decision?.hold)
        driver.setUp(.removeFromGroup(account: "corp", group: "research", member: "a2"))
        driver.setUp(.addToGroup(account: "corp", group: "sales", member: "a2"))
        var restored = try Ledger(snapshot: driver.ledger.snapshot())
        #expect(restored == driver.ledger)
        var replayed = LedgerDriver.replay(driver.journal)
        #expect(replayed == driver.ledger)
        let commit = Command.commit(Commit(HoldReference(account: "corp", hold: hold), amount: .held, isFinal: true))
        _ = restored.applyRecording(commit, key: "c", at: driver.now)
        _ = replayed.applyRecording(commit, key: "c", at: driver.now)
        for ledger in [restored, replayed] {
            #expect(ledger.groupUsage(account: "corp", group: "research", at: driver.now)?.consumed == 60)
            #expect(ledger.groupUsage(account: "corp", group: "sales", at: driver.now)?.consumed == 0)
            #expect(ledger.invariantViolations().isEmpty)
        }
    }

    /// A child's consumption at its parent's family cap is what the child decided while it was
    /// a child of that parent: detaching keeps it, re-attaching imports nothing.
    @Test func aChildsConsumptionAtItsParentIsAttributedWhenDecided() throws {
        var driver = LedgerDriver()
        driver.setUp(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: driver.now))
        driver.setUp(.createAccount(CreateAccount(account: "org")))
        driver.setUp(.setAccountCap(account: "org", limit: 100))
        driver.setUp(.addGrant(AddGrant(account: "org", amount: 1_000, effectiveAt: driver.now)))
        driver.setUp(.createAccount(CreateAccount(account: "team", parent: "org")))
        driver.setUp(.addMember(account: "team", member: "t1"))
        func org(_ driver: inout LedgerDriver) -> LevelUsage? { driver.balance(account: "org").levels.first { $0.level == .account } }

        _ = try #require(driver.spend(60, member: "t1", account: "team").decision)
        #expect(org(&driver)?.consumed == 60)
        // The family cap shows to the child as parentCap, to the parent's own requests as accountCap.
        let atChild = try #require(driver.spend(41, member: "t1", account: "team").refusal)
        #expect(atChild.error == LedgerError(.parentCap, level: .parent, subject: "org"))
        _ = try #require(driver.spend(30, member: nil, account: "org").decision)
        let atParent = try #require(driver.spend(11, member: nil, account: "org").refusal)
        #expect(atParent.error == LedgerError(.accountCap, level: .account, subject: "org"))

        // Detached, the child spends its own grant; the parent keeps the 60 it consumed then.
        driver.setUp(.setParent(account: "team", parent: nil))
        driver.setUp(.addGrant(AddGrant(account: "team", amount: 500, effectiveAt: driver.now)))
        #expect(org(&driver)?.consumed == 90)
        _ = try #require(driver.spend(200, member: "t1", account: "team").decision)
        #expect(org(&driver)?.consumed == 90)
        // Re-attached, what it spent outside the family is not imported.
        driver.setUp(.setParent(account: "team", parent: "org"))
        #expect(org(&driver)?.consumed == 90)
        _ = try #require(driver.spend(10, member: "t1", account: "team").decision)
        #expect(org(&driver)?.consumed == 100)
        #expect(driver.spend(1, member: "t1", account: "team").errorCode == .parentCap)
        #expect(driver.violations.isEmpty)
        // A child with open holds cannot move: its holds count where they were made.
        driver.setUp(.setAccountCap(account: "org", limit: 200))
        _ = try #require(driver.reserve(5, member: "t1", account: "team").decision)
        #expect(driver.run(.setParent(account: "team", parent: nil)).errorCode == .inUse)
    }
}

/// Random membership changes, group deletions and re-creations, cap changes and time passing
/// (over 60-second periods), interleaved with reserves, spends, commits and releases. A model
/// that knows only who was in which group when each decision was made says what every group
/// has consumed and holds; after every step the ledger must agree, no decision may take a group
/// past its cap, and checkpoints and replay must give the same ledger.
@Suite struct GroupAttributionPropertyTests {
    @Test(arguments: 0..<24)
    func membershipChangesNeverChangeWhatAGroupSpent(seed: Int) async {
        let failures = await OffPool.cpu("groups-\(seed)") { () -> [String] in
            var run = GroupRun(seed: UInt64(5_000 + seed))
            return run.run(steps: 1_500)
        }
        #expect(failures.isEmpty, "seed \(seed): \(failures.prefix(5).joined(separator: "\n"))")
    }
}

struct GroupRun {
    /// One incarnation of a group name: deleting and re-creating a name starts a new one.
    struct Group {
        var name: String
        var cap: Credits?
        var members: Set<String> = []
        var consumed: Credits = 0
        var windowEnd: Instant
    }

    static let members = ["m0", "m1", "m2", "m3", "m4"]
    static let names = ["g0", "g1", "g2"]
    static let period = BillingPeriod.fixed(anchor: Fixtures.start, lengthMicroseconds: 60 * Microseconds.perSecond)

    var rng: SeededGenerator
    var driver = LedgerDriver()
    /// Every incarnation, live ones last for their name.
    var groups: [Group] = []
    var live: [String: Int] = [:]
    /// Open holds: the incarnations their member was in when each was made.
    var holds: [HoldID: [Int]] = [:]
    var failures: [String] = []
    var step = 0

    init(seed: UInt64) {
        rng = SeededGenerator(seed: seed)
        driver.setUp(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: driver.now))
        driver.setUp(.createAccount(CreateAccount(account: "acct", overage: .finish(percent: 50), period: Self.period)))
        driver.setUp(.addGrant(AddGrant(account: "acct", amount: 1_000_000, effectiveAt: driver.now)))
        for member in Self.members { driver.setUp(.addMember(account: "acct", member: member)) }
        for name in Self.names { create(name) }
    }

    mutating func chance(_ percent: Int) -> Bool { Int.random(in: 0..<100, using: &rng) < percent }
    mutating func pick<T>(_ values: [T]) -> T { values.randomElement(using: &rng)! }

    mutating func create(_ name: String) {
        guard driver.run(.createGroup(account: "acct", group: name)) == .done else {
            failures.append("step \(step): creating \(name) was refused")
            return
        }
        live[name] = groups.count
        groups.append(Group(name: name, windowEnd: Self.period.window(containing: driver.now).end))
    }

    /// The incarnations a member is in now.
    func groupsOf(_ member: String) -> [Int] {
        live.values.filter { groups[$0].members.contains(member) }.sorted()
    }

    /// A group's consumption as the model knows it, at the ledger's clock.
    func consumed(_ index: Int) -> Credits {
        driver.ledger.clock >= groups[index].windowEnd ? 0 : groups[index].consumed
    }

    mutating func attribute(_ credits: Credits, to incarnations: [Int]) {
        for index in incarnations {
            if driver.ledger.clock >= groups[index].windowEnd {
                groups[index].consumed = 0
                groups[index].windowEnd = Self.period.window(containing: driver.ledger.clock).end
            }
            groups[index].consumed += credits
        }
    }

    func held(_ index: Int) -> Credits {
        holds.reduce(0) { sum, entry in entry.value.contains(index) ? sum + (driver.ledger.hold(entry.key)?.held ?? 0) : sum }
    }

    /// What each live group has used (consumed + held) by the ledger's own figures.
    func used() -> [String: Credits] {
        var result: [String: Credits] = [:]
        for name in Self.names {
            if let usage = driver.ledger.groupUsage(account: "acct", group: name, at: driver.now) { result[name] = usage.consumed + usage.held }
        }
        return result
    }

    mutating func run(steps: Int) -> [String] {
        for index in 0..<steps {
            step = index
            let before = used()
            let decided = act()
            // Holds that reached their deadline were released: the model forgets them.
            holds = holds.filter { driver.ledger.hold($0.key) != nil }
            if decided {
                for (name, after) in used() where after > (before[name] ?? 0) {
                    if let cap = groups[live[name]!].cap, after > cap {
                        failures.append("step \(index): a decision took \(name) to \(after), over its cap \(cap)")
                    }
                }
            }
            compare()
            if chance(3) { checkpoint() }
            if !failures.isEmpty { break }
        }
        var replayed = LedgerDriver.replay(driver.journal)
        var original = driver.ledger
        let end = max(replayed.clock, original.clock)
        replayed.advance(to: end)
        original.advance(to: end)
        if replayed != original { failures.append("replaying the journal gave a different ledger") }
        return failures
    }

    /// One random step; whether it was a decision.
    mutating func act() -> Bool {
        let member = pick(Self.members)
        switch Int.random(in: 0..<100, using: &rng) {
        case 0..<22:
            let answer = driver.reserve(.random(in: 1...40, using: &rng), member: member, ttl: .random(in: 1...90, using: &rng) * Microseconds.perSecond)
            if let hold = answer.decision?.hold { holds[hold] = groupsOf(member) }
            return true
        case 22..<36:
            let answer = driver.spend(.random(in: 1...40, using: &rng), member: member)
            if let cost = answer.decision?.cost { attribute(cost, to: groupsOf(member)) }
            return true
        case 36..<52:
            guard let (hold, incarnations) = holds.randomElement(using: &rng) else { return false }
            let held = driver.ledger.hold(hold)?.held ?? 0
            let final = chance(70)
            let answer = driver.commit(hold, .credits(.random(in: 0...(held * 2 + 1), using: &rng)), final: final)
            if let result = answer.committed {
                attribute(result.committed, to: incarnations)
                if final { holds.removeValue(forKey: hold) }
            }
            return true
        case 52..<58:
            guard let hold = holds.keys.randomElement(using: &rng) else { return false }
            if driver.release(hold).released != nil { holds.removeValue(forKey: hold) }
            return true
        case 58..<72:
            let name = pick(Self.names)
            guard let index = live[name] else { return false }
            if groups[index].members.contains(member) {
                expectDone(.removeFromGroup(account: "acct", group: name, member: member))
                groups[index].members.remove(member)
            } else {
                expectDone(.addToGroup(account: "acct", group: name, member: member))
                groups[index].members.insert(member)
            }
        case 72..<76:
            let name = pick(Self.names)
            if live[name] != nil {
                expectDone(.deleteGroup(account: "acct", group: name))
                live.removeValue(forKey: name)
            } else {
                create(name)
            }
        case 76..<84:
            let name = pick(Self.names)
            guard let index = live[name] else { return false }
            let cap: Credits? = chance(20) ? nil : .random(in: 0...300, using: &rng)
            expectDone(.setGroupCap(account: "acct", group: name, limit: cap))
            groups[index].cap = cap
        default:
            driver.advance(microseconds: .random(in: 0...(chance(15) ? 70 : 5), using: &rng) * Microseconds.perSecond)
            _ = driver.ledger.advance(to: driver.now)
        }
        return false
    }

    mutating func expectDone(_ command: Command) {
        let answer = driver.run(command)
        if answer != .done { failures.append("step \(step): \(command) answered \(answer)") }
    }

    mutating func compare() {
        failures += driver.ledger.invariantViolations().map { "step \(step): \($0)" }
        for (name, index) in live {
            guard let usage = driver.ledger.groupUsage(account: "acct", group: name, at: driver.now) else {
                failures.append("step \(step): group \(name) is missing")
                continue
            }
            if usage.consumed != consumed(index) || usage.held != held(index) {
                failures.append("step \(step): \(name) shows consumed \(usage.consumed) held \(usage.held), decided for it \(consumed(index)) and \(held(index))")
            }
        }
    }

    mutating func checkpoint() {
        do {
            let restored = try Ledger(snapshot: driver.ledger.snapshot())
            if restored != driver.ledger { failures.append("step \(step): a checkpoint restored a different ledger") }
            driver.ledger = restored
        } catch {
            failures.append("step \(step): a checkpoint did not restore: \(error)")
        }
    }
}
