import TollgateLedger
import TollgateWire

/// One sample frame per shape of proto/PROTOCOL.md: every request opcode, every kind of
/// response body, refusals and protocol errors. `proto/vectors.json` is generated from these.
enum Samples {
    enum Direction: String {
        case request, response
    }

    struct Sample {
        var name: String
        var frame: Frame
        var direction: Direction
    }

    static let t0 = Instant(microsecondsSinceEpoch: 1_767_225_600_000_000)  // 2026-01-01T00:00:00Z
    static let acmeRequest = DecisionRequest(account: "acme", member: "ana", product: "ai.assistant", quantity: 1)
    static let headroom = Headroom(member: 88, group: 40, groupID: "research", account: nil, parent: nil, funds: 1_388)

    static func request(_ name: String, _ id: UInt32, _ request: WireRequest) -> Sample {
        Sample(name: name, frame: request.frame(requestID: id), direction: .request)
    }

    static func response(_ name: String, _ id: UInt32, _ opcode: Opcode, _ response: WireResponse) -> Sample {
        Sample(name: name, frame: response.frame(opcode: opcode, requestID: id), direction: .response)
    }

    static var all: [Sample] {
        let hold = HoldReference(account: "acme", hold: 1)
        let periodEnd = Instant(microsecondsSinceEpoch: 1_769_904_000_000_000)
        let subscribed = Balance(
            account: "acme", member: nil, at: t0, periodStart: t0, periodEnd: periodEnd, headroom: Headroom(funds: 400),
            levels: [LevelUsage(level: .account, subject: "acme", limit: nil, consumed: 0, held: 0, headroom: nil)],
            funds: Funds(member: 0, pool: 400, parentPool: 0, overage: .deny, overdrawn: 0, overdraftHeld: 0),
            grants: [
                GrantView(
                    id: 3, account: "acme", scope: .pool, amount: 400, available: 400, held: 0, consumed: 0, expired: 0, voided: 0,
                    priority: 0, effectiveAt: t0, expiresAt: periodEnd, source: .recurring, state: .active)
            ],
            openHolds: 0,
            subscription: SubscriptionView(
                terms: Subscription(creditsPerSeat: 100, rolloverCap: 50), seats: 4, periodStart: t0, periodEnd: periodEnd,
                nextTerms: .some(Subscription(creditsPerSeat: 120)), pendingSeats: SubscriptionView.SeatChange(at: t0.adding(microseconds: 172_800_000_000), seats: 5)),
            burn: BurnRate(lastMinute: 24, lastHour: 310))
        var balance = Balance(
            account: "acme", member: "ana", at: t0, periodStart: t0, periodEnd: Instant(microsecondsSinceEpoch: 1_769_904_000_000_000),
            headroom: Headroom(member: 490, account: 4_990, funds: 1_390),
            levels: [
                LevelUsage(
                    level: .member, subject: "ana", limit: nil, consumed: 10, held: 0, headroom: 490,
                    caps: [CapView(window: .hour, mode: .hard, limit: 500, used: 10, windowEnd: t0.adding(microseconds: Microseconds.perHour))]),
                LevelUsage(
                    level: .account, subject: "acme", limit: 5_000, consumed: 10, held: 0, headroom: 4_990,
                    caps: [
                        CapView(window: .period, mode: .hard, limit: 5_000, used: 10, windowEnd: Instant(microsecondsSinceEpoch: 1_769_904_000_000_000)),
                        CapView(window: .day, mode: .soft, limit: 300, used: 10, windowEnd: t0.adding(microseconds: Microseconds.perDay)),
                    ]),
            ],
            funds: Funds(member: 0, pool: 1_390, parentPool: 0, overage: .deny, overdrawn: 0, overdraftHeld: 0),
            grants: [
                GrantView(
                    id: 1, account: "acme", scope: .pool, amount: 400, available: 390, held: 0, consumed: 10, expired: 0, voided: 0,
                    priority: 0, effectiveAt: t0, expiresAt: Instant(microsecondsSinceEpoch: 1_769_904_000_000_000), source: .recurring,
                    state: .active),
                GrantView(
                    id: 2, account: "acme", scope: .member("ana"), amount: 1_000, available: 1_000, held: 0, consumed: 0, expired: 0,
                    voided: 0, priority: 100, effectiveAt: t0, expiresAt: .distantFuture, source: .topUp, state: .active),
                GrantView(
                    id: 9, account: "acme", scope: .pool, amount: 50, available: 50, held: 0, consumed: 0, expired: 0,
                    voided: 0, priority: -1, effectiveAt: t0, expiresAt: .distantFuture, source: .promotional, state: .active,
                    products: ["ai.preview", "ai.summary"]),
            ],
            openHolds: 0)
        balance.openHoldsLimit = 4
        return [
            request("hello", 1, .hello(Hello(clientName: "example-client", token: ""))),
            request("hello with a token", 1, .hello(Hello(clientName: "example-client", token: "tg_3f9c2a71d04e8b65a1c7f0e29d4b8a63"))),
            response("hello answer", 1, .hello, .hello(HelloAnswer(version: 1, serverName: "tollgated", maxFrameBody: 65_536, maxInFlight: 1_024, maxBatchItems: 1_024, identity: "agent-runtime", role: 2))),
            request("ping", 7, .ping),
            response("pong", 7, .ping, .pong),
            request("check", 2, .check(acmeRequest)),
            response(
                "check allowed", 2, .check,
                .answer(.decision(Decision(hold: nil, cost: 12, creditsPerUnit: 12, deadline: nil, headroom: headroom)))),
            request("check for the account as a whole", 3, .check(DecisionRequest(account: "acme", member: nil, product: "ai.summary", quantity: 3))),
            request("reserve", 4, .command(.reserve(Reserve(acmeRequest, ttlMicroseconds: 30_000_000)), key: "step-1")),
            response(
                "reserve allowed", 4, .reserve,
                .answer(.decision(Decision(hold: 1, cost: 12, creditsPerUnit: 12, deadline: Instant(microsecondsSinceEpoch: 1_767_225_630_000_000), headroom: headroom)))),
            response(
                "reserve refused at zero", 5, .reserve,
                .answer(.refused(Refusal(LedgerError(.insufficientFunds, level: .account, subject: "acme"), headroom: Headroom(funds: 8))))),
            response(
                "reserve refused by a group cap", 6, .reserve,
                .answer(.refused(Refusal(LedgerError(.groupCap, level: .group, subject: "research"), headroom: Headroom(group: 3, groupID: "research", funds: 900))))),
            response("unknown account", 8, .reserve, .answer(.refused(Refusal(LedgerError(.unknownAccount, level: .account, subject: "nobody"))))),
            request("commit 10 credits, final", 9, .command(.commit(Commit(hold, amount: .credits(10))), key: "step-1-commit")),
            response("commit result", 9, .commit, .answer(.committed(CommitResult(hold: 1, committed: 10, returned: 2, stillHeld: 0, headroom: Headroom(funds: 1_390))))),
            request("commit by quantity, partial", 10, .command(.commit(Commit(hold, amount: .quantity(1), isFinal: false)), key: "chunk-1")),
            request("commit what is held", 11, .command(.commit(Commit(hold)), key: "step-1-done")),
            request("release", 12, .command(.release(hold), key: "step-1-cancel")),
            response("release result", 12, .release, .answer(.released(ReleaseResult(hold: 1, released: 12, headroom: Headroom(funds: 1_400))))),
            response("release of a committed hold", 13, .release, .answer(.refused(Refusal(LedgerError(.holdCommitted, level: .request, subject: "1"))))),
            request("extend", 14, .command(.extend(Extend(hold, ttlMicroseconds: 60_000_000)), key: "step-1-extend")),
            response("extend result", 14, .extend, .answer(.extended(ExtendResult(hold: 1, deadline: Instant(microsecondsSinceEpoch: 1_767_225_660_000_000), headroom: Headroom(funds: 1_388))))),
            request("spend", 15, .command(.spend(Spend(DecisionRequest(account: "acme", member: "ben", product: "ai.summary", quantity: 10))), key: "summary-1")),
            response("spend allowed", 15, .spend, .answer(.decision(Decision(hold: nil, cost: 70, creditsPerUnit: 7, deadline: nil, headroom: Headroom(funds: 1_318))))),
            request("balance of a member", 16, .balance(account: "acme", member: "ana")),
            request("balance of an account", 17, .balance(account: "acme", member: nil)),
            response("balance", 16, .balance, .balance(balance)),
            request("balance of a member at a past instant", 19, .balanceAt(account: "acme", member: "ana", at: t0)),
            response("balance at a past instant", 19, .balanceAt, .balance(balance)),
            response("balance of an account with a subscription (5 seats from a set instant, new terms next period)", 17, .balance, .balance(subscribed)),
            request(
                "batch of two", 18,
                .batch([.check(acmeRequest), .command(.spend(Spend(acmeRequest)), key: "batch-1")])),
            response(
                "batch answers", 18, .batch,
                .batch([
                    BatchItemResponse(opcode: .check, response: .answer(.decision(Decision(hold: nil, cost: 12, creditsPerUnit: 12, deadline: nil, headroom: Headroom(funds: 20))))),
                    BatchItemResponse(opcode: .spend, response: .answer(.refused(Refusal(LedgerError(.memberCap, level: .member, subject: "ana"), headroom: Headroom(member: 5, funds: 20))))),
                ])),
            request("create account", 20, .command(.createAccount(CreateAccount(account: "acme")), key: "setup-1")),
            request(
                "create child account with overdraft and a monthly period", 21,
                .command(.createAccount(CreateAccount(account: "acme-eu", parent: "acme", overage: .overdraft(limit: 500), period: .monthly(anchor: t0))), key: "setup-2")),
            response("done", 21, .createAccount, .answer(.done)),
            request("set parent", 22, .command(.setParent(account: "acme-eu", parent: nil), key: "setup-3")),
            request("set overage finish", 23, .command(.setOverage(account: "acme", policy: .finish(percent: 20)), key: "setup-4")),
            request("set fixed period", 24, .command(.setPeriod(account: "acme", period: .fixed(anchor: t0, lengthMicroseconds: 86_400_000_000)), key: "setup-5")),
            request("set account cap", 25, .command(.setAccountCap(account: "acme", limit: 5_000), key: "setup-6")),
            request("remove account cap", 26, .command(.setAccountCap(account: "acme", limit: nil), key: "setup-7")),
            request("add member", 27, .command(.addMember(account: "acme", member: "ana"), key: "setup-8")),
            request("remove member", 28, .command(.removeMember(account: "acme", member: "dee"), key: "setup-9")),
            request("set member cap", 29, .command(.setMemberCap(account: "acme", member: "ana", limit: 100), key: "setup-10")),
            request("create group", 30, .command(.createGroup(account: "acme", group: "research"), key: "setup-11")),
            request("delete group", 31, .command(.deleteGroup(account: "acme", group: "research"), key: "setup-12")),
            request("set group cap", 32, .command(.setGroupCap(account: "acme", group: "research", limit: 40), key: "setup-13")),
            request("add to group", 33, .command(.addToGroup(account: "acme", group: "research", member: "ana"), key: "setup-14")),
            request("remove from group", 34, .command(.removeFromGroup(account: "acme", group: "research", member: "ana"), key: "setup-15")),
            response(
                "remove from group of a member not in it", 34, .removeFromGroup,
                .answer(.refused(Refusal(LedgerError(.notInGroup, level: .group, subject: "ana is not in research"))))),
            request(
                "add pooled grant", 35,
                .command(.addGrant(AddGrant(account: "acme", amount: 400, priority: 0, effectiveAt: t0, expiresAt: Instant(microsecondsSinceEpoch: 1_769_904_000_000_000), source: .recurring)), key: "setup-16")),
            request(
                "add member top-up that never expires", 36,
                .command(.addGrant(AddGrant(account: "acme", scope: .member("ana"), amount: 1_000, priority: 100, effectiveAt: t0, source: .topUp)), key: "setup-17")),
            response("grant added", 36, .addGrant, .answer(.grantAdded(2))),
            request("void grant", 37, .command(.voidGrant(account: "acme", grant: 2), key: "setup-18")),
            request("set rate", 38, .command(.setRate(product: "ai.assistant", creditsPerUnit: 12, effectiveAt: t0), key: "setup-19")),
            request("set account rate", 39, .command(.setAccountRate(account: "acme", product: "ai.assistant", creditsPerUnit: 10, effectiveAt: t0), key: "setup-20")),
            request("withdraw account rate", 40, .command(.setAccountRate(account: "acme", product: "ai.assistant", creditsPerUnit: nil, effectiveAt: t0), key: "setup-21")),
            request(
                "set a pooled subscription: 100 credits a seat, rollover up to 50", 44,
                .command(.setSubscription(account: "acme", terms: Subscription(creditsPerSeat: 100, rolloverCap: 50)), key: "setup-22")),
            request(
                "set a per-member subscription without proration, clawing back removed seats", 45,
                .command(
                    .setSubscription(
                        account: "acme", terms: Subscription(scope: .perMember, creditsPerSeat: 500, prorate: false, removal: .clawBack, priority: -1)),
                    key: "setup-23")),
            request("end the subscription at the period's end", 46, .command(.setSubscription(account: "acme", terms: nil), key: "setup-24")),
            request("set 5 seats from a given instant", 47, .command(.setSeats(account: "acme", seats: 5, effectiveAt: t0), key: "setup-25")),
            request(
                "alert when the account holds 10 credits or fewer", 48,
                .command(.setAlert(account: "acme", rule: AlertRule(id: "low", threshold: .credits(10))), key: "setup-26")),
            request(
                "alert when a member is down to 20% of its seat's allotment", 49,
                .command(.setAlert(account: "acme", rule: AlertRule(id: "ana-low", member: "ana", threshold: .percentOfAllotment(20))), key: "setup-27")),
            request(
                "alert on depletion", 50, .command(.setAlert(account: "acme", rule: AlertRule(id: "empty", threshold: .depleted)), key: "setup-28")),
            request("remove an alert", 51, .command(.removeAlert(account: "acme", id: "low"), key: "setup-29")),
            request(
                "auto-recharge: below 50, add up to 500 (at most 200 at a time), 3 times a period, for 30 days", 52,
                .command(
                    .setAutoRecharge(
                        account: "acme",
                        rule: AutoRecharge(below: 50, amount: 200, upTo: 500, maxPerPeriod: 3, priority: 100, expiresAfterMicroseconds: 2_592_000_000_000)),
                    key: "setup-30")),
            request("turn auto-recharge off", 53, .command(.setAutoRecharge(account: "acme", rule: nil), key: "setup-31")),
            request(
                "define the Team plan: 100 pooled credits a seat, an alert at 10, a yearly 1,000-credit top-up", 56,
                .command(
                    .definePlan(
                        Plan(
                            name: "team", subscription: Subscription(creditsPerSeat: 100),
                            grants: [PlanGrant(amount: 1_000, priority: 100, source: .topUp, lifetimeMicroseconds: 31_536_000_000_000)],
                            alerts: [AlertRule(id: "low", threshold: .credits(10))])), key: "setup-32")),
            request(
                "define an enterprise plan: a prepaid bucket, overdraft, auto-recharge", 57,
                .command(
                    .definePlan(
                        Plan(
                            name: "enterprise", overage: .overdraft(limit: 5_000), grants: [PlanGrant(amount: 1_000_000, source: .manual)],
                            autoRecharge: AutoRecharge(below: 10_000, amount: 100_000, maxPerPeriod: 4))), key: "setup-33")),
            request(
                "provision an account on the Team plan with 4 seats", 58,
                .command(.provision(Provision(account: "globex", plan: "team", seats: 4, members: ["ana", "ben", "cy", "dee"])), key: "setup-34")),
            request("freeze a family before it moves to shard s1", 59, .command(.moveFamilyOut(account: "globex", destination: "s1"), key: "move-1")),
            request("read the frozen family", 60, .familyTransfer(account: "globex")),
            response("the family as bytes", 60, .familyTransfer, .transfer([0x54, 0x47, 0x46, 0x31, 0x00, 0x01])),
            request("add the family on the new shard", 61, .command(.moveFamilyIn(account: "globex", transfer: [0x54, 0x47, 0x46, 0x31, 0x00, 0x01]), key: "move-1")),
            response(
                "a spend for a family that moved away", 62, .spend,
                .answer(.refused(Refusal(LedgerError(.familyMoved, level: .account, subject: "globex is on shard s1 now"))))),
            request("a new replica lists a node's files", 63, .nodeFiles),
            response(
                "a checkpoint and a run of keys", 63, .nodeFiles,
                .files([NodeFile(name: "checkpoint-00000000000000004096.tgc", bytes: 31_337), NodeFile(name: "keys-0000000000000007.tgk", bytes: 65_536)])),
            request("and reads one, half a MiB at a time", 64, .readNodeFile(name: "checkpoint-00000000000000004096.tgc", offset: 524_288, length: 524_288)),
            response("a piece of the file", 64, .readNodeFile, .transfer([0x54, 0x47, 0x43, 0x31])),
            request("subscribe to one account's events from now on", 54, .subscribe(after: nil, account: "acme")),
            request("subscribe to every event after sequence 41", 55, .subscribe(after: 41, account: nil)),
            response("subscribed: the next event will be number 42", 55, .subscribe, .subscribed(nextSequence: 42)),
            response(
                "event: an alert fired", 55, .event,
                .event(LedgerEvent(sequence: 42, at: t0, account: "acme", member: nil, kind: .alert(id: "low", threshold: 10, balance: 9)))),
            response(
                "event: a member's credits are gone", 55, .event,
                .event(LedgerEvent(sequence: 43, at: t0, account: "acme", member: "ana", kind: .depleted(id: "ana-empty", balance: 0)))),
            response(
                "event: an auto-recharge added grant 7", 55, .event,
                .event(LedgerEvent(sequence: 44, at: t0, account: "acme", member: nil, kind: .recharged(grant: 7, amount: 200, balance: 249)))),
            request(
                "an hourly cap on a member", 65,
                .command(.setCap(SetCap(account: "acme", target: .member("ana"), window: .hour, mode: .hard, limit: 500)), key: "setup-35")),
            request(
                "a soft daily cap on a group", 66,
                .command(.setCap(SetCap(account: "acme", target: .group("research"), window: .day, mode: .soft, limit: 2_000)), key: "setup-36")),
            request(
                "promotional credits for two products only", 71,
                .command(
                    .addGrant(AddGrant(account: "acme", amount: 50, priority: -1, effectiveAt: t0, source: .promotional, products: ["ai.preview", "ai.summary"])),
                    key: "setup-39")),
            request(
                "a model's output tokens: 15 credits per 1,000", 72,
                .command(.setMeteredRate(product: "gpt-x", dimension: "output", rate: MeteredRate(credits: 15, per: 1_000), effectiveAt: t0), key: "setup-40")),
            request(
                "reserve an LLM call at its worst case", 73,
                .command(
                    .reserveMetered(
                        MeteredRequest(
                            account: "acme", member: "ana", product: "gpt-x", dimensions: [DimensionQuantity("input", 8_000), DimensionQuantity("output", 4_000)]),
                        ttlMicroseconds: 120_000_000), key: "call-7")),
            response(
                "reserved: 84 credits held", 73, .reserveMetered,
                .answer(.decision(Decision(hold: 12, cost: 84, creditsPerUnit: 0, deadline: t0.adding(microseconds: 120_000_000), headroom: Headroom(funds: 916))))),
            request(
                "commit the tokens the call used", 74,
                .command(
                    .commitMetered(
                        hold: HoldReference(account: "acme", hold: 12), dimensions: [DimensionQuantity("input", 5_123), DimensionQuantity("output", 1_001)],
                        isFinal: true), key: "call-7-done")),
            response(
                "committed 31, returned 53", 74, .commitMetered,
                .answer(.committed(CommitResult(hold: 12, committed: 31, returned: 53, stillHeld: 0, headroom: Headroom(funds: 969))))),
            request(
                "spend a metered call in one step", 75,
                .command(.spendMetered(MeteredRequest(account: "acme", member: nil, product: "gpt-x", dimensions: [DimensionQuantity("input", 900)])), key: "call-8")),
            request("at most 4 open holds for each member", 67, .command(.setConcurrency(account: "acme", target: .eachMember, limit: 4), key: "setup-37")),
            request("no bound of its own for ana", 68, .command(.setConcurrency(account: "acme", target: .member("ana"), limit: nil), key: "setup-38")),
            response(
                "refused: ana's hourly cap", 69, .reserve,
                .answer(.refused(Refusal(LedgerError(.memberCap, level: .member, subject: "ana per hour"), headroom: Headroom(member: 3, account: nil, funds: 1_000))))),
            response(
                "refused: too many open holds", 70, .reserve,
                .answer(.refused(Refusal(LedgerError(.concurrencyLimit, level: .member, subject: "ana"), headroom: Headroom(member: 300, funds: 1_000))))),
            response(
                "event: a soft cap was passed", 55, .event,
                .event(
                    LedgerEvent(
                        sequence: 45, at: t0, account: "acme", member: nil,
                        kind: .softLimit(level: .group, subject: "research", window: .day, limit: 2_000, used: 2_010)))),
            response("malformed body", 41, .reserve, .error(WireError(.malformedFrame, "2 bytes left over after the last field"))),
            response("forbidden: a gate identity asked to add a grant", 43, .addGrant, .error(WireError(.forbidden, "agent-runtime has the gate role, which may not send ADD_GRANT"))),
            Sample(
                name: "error frame: unauthorized, then the connection closes",
                frame: WireResponse.error(WireError(.unauthorized, "the token was not accepted")).frame(opcode: .error, requestID: 0),
                direction: .response),
            response("unknown opcode, answered by an ERROR frame with the request id", 42, .error, .error(WireError(.unknownOpcode, "opcode 0x7e is not a request"))),
            Sample(
                name: "error frame: frame too large", frame: WireResponse.error(WireError(.frameTooLarge, "body of 1048576 bytes exceeds the limit of 65536")).frame(opcode: .error, requestID: 0),
                direction: .response),
        ]
    }
}
