import TollgateLedger

/// A canonical one-line rendering of decoded frames: the "meaning" column of
/// proto/vectors.json, and what the CLI prints when asked to trace. Field names are those of
/// proto/PROTOCOL.md; strings are quoted, absent optionals are written `-`.
public enum WireText {
    public static func describe(_ header: FrameHeader, request: WireRequest) -> String {
        let fields = requestFields(request)
        return (["request", "id=\(header.requestID)", request.opcode.name] + fields).joined(separator: " ")
    }

    public static func describe(_ header: FrameHeader, response: WireResponse) -> String {
        let opcode = Opcode(rawValue: header.opcode)?.name ?? "0x\(String(header.opcode, radix: 16))"
        return (["response", "id=\(header.requestID)", opcode] + responseFields(response)).joined(separator: " ")
    }

    /// A command and its key, as the journal dump prints them: `OPCODE key="…" fields…`.
    public static func describe(command: Command, key: String) -> String {
        ([command.opcode.name] + requestFields(.command(command, key: key))).joined(separator: " ")
    }

    static func quote(_ string: String) -> String {
        var quoted = "\""
        for character in string {
            if character == "\"" || character == "\\" { quoted.append("\\") }
            quoted.append(character)
        }
        return quoted + "\""
    }

    static func optional(_ string: String?) -> String {
        string.map(quote) ?? "-"
    }

    static func hex(_ bytes: [UInt8]) -> String {
        "0x" + bytes.map { String($0 >> 4, radix: 16) + String($0 & 15, radix: 16) }.joined()
    }

    static func optional(_ value: Int64?) -> String {
        value.map(String.init) ?? "-"
    }

    static func requestFields(_ request: WireRequest) -> [String] {
        switch request {
        case .hello(let hello):
            return ["minVersion=\(hello.minVersion)", "maxVersion=\(hello.maxVersion)", "clientName=\(quote(hello.clientName))", "token=\(quote(hello.token))"]
        case .ping:
            return []
        case .check(let request):
            return decisionRequest(request)
        case .balance(let account, let member):
            return ["account=\(quote(account))", "member=\(optional(member))"]
        case .balanceAt(let account, let member, let at):
            return ["account=\(quote(account))", "member=\(optional(member))", "at=\(at.microsecondsSinceEpoch)"]
        case .command(let command, let key):
            return ["key=\(quote(key))"] + commandFields(command)
        case .batch(let items):
            return ["count=\(items.count)"] + items.map { "[\(([$0.opcode.name] + requestFields($0)).joined(separator: " "))]" }
        case .subscribe(let after, let account):
            return ["after=\(after.map(String.init) ?? "-")", "account=\(optional(account))"]
        case .familyTransfer(let account):
            return ["account=\(quote(account))"]
        case .nodeFiles:
            return []
        case .readNodeFile(let name, let offset, let length):
            return ["name=\(quote(name))", "offset=\(offset)", "length=\(length)"]
        }
    }

    static func decisionRequest(_ request: DecisionRequest) -> [String] {
        ["account=\(quote(request.account))", "member=\(optional(request.member))", "product=\(quote(request.product))", "quantity=\(request.quantity)"]
    }

    static func hold(_ reference: HoldReference) -> [String] {
        ["account=\(quote(reference.account))", "hold=\(reference.hold)"]
    }

    static func overage(_ policy: OveragePolicy) -> String {
        switch policy {
        case .deny: "deny"
        case .overdraft(let limit): "overdraft(\(limit))"
        case .finish(let percent): "finish(\(percent))"
        }
    }

    static func period(_ period: BillingPeriod) -> String {
        switch period {
        case .monthly(let anchor): "monthly(anchor=\(anchor.microsecondsSinceEpoch))"
        case .fixed(let anchor, let length): "fixed(anchor=\(anchor.microsecondsSinceEpoch),length=\(length))"
        }
    }

    static func scope(_ scope: GrantScope) -> String {
        switch scope {
        case .pool: "pool"
        case .member(let member): "member(\(quote(member)))"
        }
    }

    static func meteredRequest(_ request: MeteredRequest) -> [String] {
        ["account=\(quote(request.account))", "member=\(optional(request.member))", "product=\(quote(request.product))", "dimensions=\(dimensions(request.dimensions))"]
    }

    static func dimensions(_ dimensions: [DimensionQuantity]) -> String {
        "[" + dimensions.map { "\(quote($0.dimension))=\($0.quantity)" }.joined(separator: ",") + "]"
    }

    static func commandFields(_ command: Command) -> [String] {
        switch command {
        case .reserve(let reserve):
            return decisionRequest(reserve.request) + ["ttlMicroseconds=\(reserve.ttlMicroseconds)"]
        case .spend(let spend):
            return decisionRequest(spend.request)
        case .reserveMetered(let request, let ttl):
            return meteredRequest(request) + ["ttlMicroseconds=\(ttl)"]
        case .spendMetered(let request):
            return meteredRequest(request)
        case .commitMetered(let hold, let dimensions, let isFinal):
            return ["account=\(quote(hold.account))", "hold=\(hold.hold)", "dimensions=\(Self.dimensions(dimensions))", "final=\(isFinal)"]
        case .setMeteredRate(let product, let dimension, let rate, let effectiveAt):
            return [
                "product=\(quote(product))", "dimension=\(quote(dimension))", "credits=\(rate.credits)", "per=\(rate.per)",
                "effectiveAt=\(effectiveAt.microsecondsSinceEpoch)",
            ]
        case .commit(let commit):
            let amount: String
            switch commit.amount {
            case .held: amount = "held"
            case .quantity(let quantity): amount = "quantity(\(quantity))"
            case .credits(let credits): amount = "credits(\(credits))"
            }
            return hold(commit.hold) + ["amount=\(amount)", "final=\(commit.isFinal)"]
        case .release(let reference):
            return hold(reference)
        case .extend(let extend):
            return hold(extend.hold) + ["ttlMicroseconds=\(extend.ttlMicroseconds)"]
        case .createAccount(let create):
            return [
                "account=\(quote(create.account))", "parent=\(optional(create.parent))", "overage=\(overage(create.overage))",
                "period=\(create.period.map(period) ?? "-")",
            ]
        case .setParent(let account, let parent):
            return ["account=\(quote(account))", "parent=\(optional(parent))"]
        case .setOverage(let account, let policy):
            return ["account=\(quote(account))", "overage=\(overage(policy))"]
        case .setPeriod(let account, let value):
            return ["account=\(quote(account))", "period=\(period(value))"]
        case .setAccountCap(let account, let limit):
            return ["account=\(quote(account))", "limit=\(optional(limit))"]
        case .addMember(let account, let member), .removeMember(let account, let member):
            return ["account=\(quote(account))", "member=\(quote(member))"]
        case .setMemberCap(let account, let member, let limit):
            return ["account=\(quote(account))", "member=\(quote(member))", "limit=\(optional(limit))"]
        case .createGroup(let account, let group), .deleteGroup(let account, let group):
            return ["account=\(quote(account))", "group=\(quote(group))"]
        case .setGroupCap(let account, let group, let limit):
            return ["account=\(quote(account))", "group=\(quote(group))", "limit=\(optional(limit))"]
        case .addToGroup(let account, let group, let member), .removeFromGroup(let account, let group, let member):
            return ["account=\(quote(account))", "group=\(quote(group))", "member=\(quote(member))"]
        case .addGrant(let grant):
            return [
                "account=\(quote(grant.account))", "scope=\(scope(grant.scope))", "amount=\(grant.amount)", "priority=\(grant.priority)",
                "effectiveAt=\(grant.effectiveAt.microsecondsSinceEpoch)", "expiresAt=\(grant.expiresAt.microsecondsSinceEpoch)",
                "source=\(grant.source.rawValue)", "products=[\(grant.products.map(quote).joined(separator: ","))]",
            ]
        case .voidGrant(let account, let grant):
            return ["account=\(quote(account))", "grant=\(grant)"]
        case .setRate(let product, let rate, let effectiveAt):
            return ["product=\(quote(product))", "creditsPerUnit=\(rate)", "effectiveAt=\(effectiveAt.microsecondsSinceEpoch)"]
        case .setAccountRate(let account, let product, let rate, let effectiveAt):
            return [
                "account=\(quote(account))", "product=\(quote(product))", "creditsPerUnit=\(optional(rate))",
                "effectiveAt=\(effectiveAt.microsecondsSinceEpoch)",
            ]
        case .setSubscription(let account, let terms):
            return ["account=\(quote(account))", "terms=\(terms.map(subscription) ?? "-")"]
        case .setSeats(let account, let seats, let effectiveAt):
            return ["account=\(quote(account))", "seats=\(seats)", "effectiveAt=\(effectiveAt.microsecondsSinceEpoch)"]
        case .setAlert(let account, let rule):
            return ["account=\(quote(account))", "id=\(quote(rule.id))", "member=\(optional(rule.member))", "threshold=\(threshold(rule.threshold))"]
        case .removeAlert(let account, let id):
            return ["account=\(quote(account))", "id=\(quote(id))"]
        case .setAutoRecharge(let account, let rule):
            return ["account=\(quote(account))", "recharge=\(recharge(rule))"]
        case .definePlan(let plan):
            let grants = plan.grants.map { "(amount=\($0.amount),priority=\($0.priority),source=\($0.source.rawValue),lifetime=\(optional($0.lifetimeMicroseconds)))" }
            let alerts = plan.alerts.map { "(\(quote($0.id)),\(threshold($0.threshold)))" }
            return [
                "name=\(quote(plan.name))", "overage=\(overage(plan.overage))", "subscription=\(plan.subscription.map(subscription) ?? "-")",
                "grants=[\(grants.joined(separator: ","))]", "alerts=[\(alerts.joined(separator: ","))]", "recharge=\(recharge(plan.autoRecharge))",
            ]
        case .moveFamilyOut(let account, let destination):
            return ["account=\(quote(account))", "destination=\(quote(destination))"]
        case .moveFamilyIn(let account, let transfer):
            return ["account=\(quote(account))", "transfer=\(hex(transfer))"]
        case .provision(let provision):
            return [
                "account=\(quote(provision.account))", "plan=\(quote(provision.plan))", "parent=\(optional(provision.parent))", "seats=\(provision.seats)",
                "members=[\(provision.members.map(quote).joined(separator: ","))]",
            ]
        case .setCap(let set):
            let target: String
            switch set.target {
            case .account: target = "account"
            case .member(let member): target = "member(\(quote(member)))"
            case .group(let group): target = "group(\(quote(group)))"
            }
            return [
                "account=\(quote(set.account))", "target=\(target)", "window=\(set.window.name)", "mode=\(set.mode.name)", "limit=\(optional(set.limit))",
            ]
        case .setConcurrency(let account, let target, let limit):
            let name: String
            switch target {
            case .account: name = "account"
            case .eachMember: name = "eachMember"
            case .member(let member): name = "member(\(quote(member)))"
            }
            return ["account=\(quote(account))", "target=\(name)", "limit=\(optional(limit))"]
        }
    }

    static func threshold(_ threshold: AlertRule.Threshold) -> String {
        switch threshold {
        case .credits(let credits): "credits(\(credits))"
        case .percentOfAllotment(let percent): "percent(\(percent))"
        case .depleted: "depleted"
        }
    }

    static func recharge(_ rule: AutoRecharge?) -> String {
        guard let rule else { return "-" }
        return "(below=\(rule.below),amount=\(rule.amount),upTo=\(optional(rule.upTo)),maxPerPeriod=\(rule.maxPerPeriod),priority=\(rule.priority),expiresAfter=\(optional(rule.expiresAfterMicroseconds)))"
    }

    static func subscription(_ terms: Subscription) -> String {
        "subscription(scope=\(terms.scope.rawValue),creditsPerSeat=\(terms.creditsPerSeat),prorate=\(terms.prorate),removal=\(terms.removal.rawValue),"
            + "rolloverCap=\(terms.rolloverCap),priority=\(terms.priority))"
    }

    static func headroom(_ headroom: Headroom) -> String {
        var parts: [String] = []
        if let member = headroom.member { parts.append("member=\(member)") }
        if let group = headroom.group { parts.append("group=\(group)(\(quote(headroom.groupID ?? "")))") }
        if let account = headroom.account { parts.append("account=\(account)") }
        if let parent = headroom.parent { parts.append("parent=\(parent)") }
        parts.append("funds=\(headroom.funds)")
        return "headroom={" + parts.joined(separator: ",") + "}"
    }

    static func statusName(_ response: WireResponse) -> String {
        switch response {
        case .answer(.refused(let refusal)): refusal.error.code.identifier
        case .error(let error): error.status.name
        default: "ok"
        }
    }

    static func responseFields(_ response: WireResponse) -> [String] {
        let status = statusName(response)
        switch response {
        case .hello(let hello):
            return [
                status, "version=\(hello.version)", "serverName=\(quote(hello.serverName))", "maxFrameBody=\(hello.maxFrameBody)",
                "maxInFlight=\(hello.maxInFlight)", "maxBatchItems=\(hello.maxBatchItems)", "identity=\(quote(hello.identity))", "role=\(hello.role)",
            ]
        case .pong:
            return [status]
        case .answer(let answer):
            return [status] + answerFields(answer)
        case .balance(let balance):
            var fields = [
                status, "account=\(quote(balance.account))", "member=\(optional(balance.member))", "at=\(balance.at.microsecondsSinceEpoch)",
                "periodStart=\(balance.periodStart.microsecondsSinceEpoch)", "periodEnd=\(balance.periodEnd.microsecondsSinceEpoch)",
                headroom(balance.headroom),
            ]
            for level in balance.levels {
                fields.append(
                    "level=\(level.level.name)(\(quote(level.subject)),limit=\(optional(level.limit)),consumed=\(level.consumed),held=\(level.held),headroom=\(optional(level.headroom)))")
            }
            let funds = balance.funds
            fields.append(
                "funds=(member=\(funds.member),pool=\(funds.pool),parentPool=\(funds.parentPool),overage=\(overage(funds.overage)),overdrawn=\(funds.overdrawn),overdraftHeld=\(funds.overdraftHeld))")
            for grant in balance.grants {
                fields.append(
                    "grant=(\(grant.id),\(quote(grant.account)),\(scope(grant.scope)),amount=\(grant.amount),available=\(grant.available),held=\(grant.held),consumed=\(grant.consumed),expired=\(grant.expired),voided=\(grant.voided),priority=\(grant.priority),effectiveAt=\(grant.effectiveAt.microsecondsSinceEpoch),expiresAt=\(grant.expiresAt.microsecondsSinceEpoch),source=\(grant.source.rawValue),state=\(grant.state.rawValue))")
            }
            fields.append("openHolds=\(balance.openHolds)")
            if balance.subscription == nil { fields.append("subscription=-") }
            if let view = balance.subscription {
                let next: String
                switch view.nextTerms {
                case .none: next = "unchanged"
                case .some(.none): next = "ends"
                case .some(.some(let terms)): next = subscription(terms)
                }
                let pending = view.pendingSeats.map { "\($0.seats)@\($0.at.microsecondsSinceEpoch)" } ?? "-"
                fields.append(
                    "subscription=(\(subscription(view.terms)),seats=\(view.seats),periodStart=\(view.periodStart.microsecondsSinceEpoch),periodEnd=\(view.periodEnd.microsecondsSinceEpoch),next=\(next),pendingSeats=\(pending))")
            }
            fields.append("burn=(lastMinute=\(balance.burn.lastMinute),lastHour=\(balance.burn.lastHour))")
            for (index, level) in balance.levels.enumerated() {
                for cap in level.caps {
                    fields.append(
                        "cap=(level=\(index),window=\(cap.window.name),mode=\(cap.mode.name),limit=\(cap.limit),used=\(cap.used),windowEnd=\(cap.windowEnd.microsecondsSinceEpoch))")
                }
            }
            fields.append("openHoldsLimit=\(optional(balance.openHoldsLimit.map { Int64($0) }))")
            for (index, grant) in balance.grants.enumerated() where !grant.products.isEmpty {
                fields.append("grantProducts=(grant=\(index),[\(grant.products.map(quote).joined(separator: ","))])")
            }
            return fields
        case .batch(let items):
            return [status, "count=\(items.count)"] + items.map { "[\(([$0.opcode.name] + responseFields($0.response)).joined(separator: " "))]" }
        case .error(let error):
            return [status, "message=\(quote(error.message))"]
        case .subscribed(let next):
            return [status, "nextSequence=\(next)"]
        case .transfer(let bytes):
            return [status, "transfer=\(hex(bytes))"]
        case .files(let files):
            return [status, "files=[\(files.map { "(\(quote($0.name)),\($0.bytes))" }.joined(separator: ","))]"]
        case .event(let event):
            var fields = [status, "sequence=\(event.sequence)", "at=\(event.at.microsecondsSinceEpoch)", "account=\(quote(event.account))", "member=\(optional(event.member))"]
            switch event.kind {
            case .alert(let id, let threshold, let balance): fields += ["alert=\(quote(id))", "threshold=\(threshold)", "balance=\(balance)"]
            case .depleted(let id, let balance): fields += ["depleted=\(quote(id))", "balance=\(balance)"]
            case .recharged(let grant, let amount, let balance): fields += ["recharged=\(grant)", "amount=\(amount)", "balance=\(balance)"]
            case .softLimit(let level, let subject, let window, let limit, let used):
                fields += ["softLimit=\(level.name)", "subject=\(quote(subject))", "window=\(window.name)", "limit=\(limit)", "used=\(used)"]
            }
            return fields
        }
    }

    static func answerFields(_ answer: Answer) -> [String] {
        switch answer {
        case .decision(let decision):
            return [
                "hold=\(decision.hold.map(String.init) ?? "-")", "cost=\(decision.cost)", "creditsPerUnit=\(decision.creditsPerUnit)",
                "deadline=\(optional(decision.deadline?.microsecondsSinceEpoch))", headroom(decision.headroom),
            ]
        case .committed(let result):
            return ["hold=\(result.hold)", "committed=\(result.committed)", "returned=\(result.returned)", "stillHeld=\(result.stillHeld)", headroom(result.headroom)]
        case .released(let result):
            return ["hold=\(result.hold)", "released=\(result.released)", headroom(result.headroom)]
        case .extended(let result):
            return ["hold=\(result.hold)", "deadline=\(result.deadline.microsecondsSinceEpoch)", headroom(result.headroom)]
        case .grantAdded(let id):
            return ["grant=\(id)"]
        case .done:
            return []
        case .refused(let refusal):
            return ["level=\(refusal.error.level.name)", "subject=\(quote(refusal.error.subject))"] + (refusal.headroom.map { [headroom($0)] } ?? ["headroom=-"])
        }
    }
}
