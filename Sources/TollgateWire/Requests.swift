import NIOCore
import TollgateLedger

/// The HELLO request body (§4).
public struct Hello: Hashable, Sendable {
    public var minVersion: UInt8
    public var maxVersion: UInt8
    public var clientName: String
    /// PROTOCOL.md §3: a client's name is at most this many bytes of UTF-8.
    public static let clientNameBytesMax = 64
    /// Empty for none.
    public var token: String

    public init(minVersion: UInt8 = 1, maxVersion: UInt8 = 1, clientName: String, token: String = "") {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.clientName = clientName
        self.token = token
    }
}

/// Bounds the decoder applies beyond the frame size.
public struct WireLimits: Hashable, Sendable {
    public var maxBatchItems: Int

    public init(maxBatchItems: Int = 1_024) {
        self.maxBatchItems = maxBatchItems
    }
}

/// Everything a client can ask, as one value per request frame.
public enum WireRequest: Hashable, Sendable {
    case hello(Hello)
    case ping
    case check(DecisionRequest)
    case balance(account: String, member: String?)
    case balanceAt(account: String, member: String?, at: Instant)
    /// Every mutating operation, gate or admin, with its idempotency key.
    case command(Command, key: String)
    /// Items are `.check` or gate `.command`s.
    case batch([WireRequest])
    /// Events with a sequence above `after` (absent: from now on), of one account or all.
    case subscribe(after: UInt64?, account: String?)
    /// A family moved out of this shard, as bytes for MOVE_FAMILY_IN (admin).
    case familyTransfer(account: String)
    /// The files a new replica of this node's shard starts from (admin).
    case nodeFiles
    /// At most `length` bytes of one of them from `offset` (admin).
    case readNodeFile(name: String, offset: UInt64, length: UInt32)

    public var opcode: Opcode {
        switch self {
        case .hello: .hello
        case .ping: .ping
        case .check: .check
        case .balance: .balance
        case .balanceAt: .balanceAt
        case .batch: .batch
        case .subscribe: .subscribe
        case .familyTransfer: .familyTransfer
        case .nodeFiles: .nodeFiles
        case .readNodeFile: .readNodeFile
        case .command(let command, _): command.opcode
        }
    }

    public func frame(requestID: UInt32) -> Frame {
        var body = ByteBuffer()
        encodeBody(into: &body)
        return Frame(opcode: opcode.rawValue, isResponse: false, requestID: requestID, body: body)
    }

    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .hello(let hello):
            buffer.writeInteger(hello.minVersion)
            buffer.writeInteger(hello.maxVersion)
            buffer.writeWireString(hello.clientName)
            buffer.writeWireString(hello.token)
        case .ping:
            break
        case .check(let request):
            buffer.writeDecisionRequest(request)
        case .balance(let account, let member):
            buffer.writeWireString(account)
            buffer.writeOptionalString(member)
        case .balanceAt(let account, let member, let at):
            buffer.writeWireString(account)
            buffer.writeOptionalString(member)
            buffer.writeInstant(at)
        case .command(let command, let key):
            buffer.writeWireString(key)
            buffer.writeCommandFields(command)
        case .batch(let items):
            buffer.writeInteger(UInt16(items.count))
            for item in items {
                buffer.writeInteger(item.opcode.rawValue)
                buffer.writeLengthPrefixed { item.encodeBody(into: &$0) }
            }
        case .subscribe(let after, let account):
            buffer.writeOptionalInteger(after)
            buffer.writeOptionalString(account)
        case .familyTransfer(let account):
            buffer.writeWireString(account)
        case .nodeFiles:
            break
        case .readNodeFile(let name, let offset, let length):
            buffer.writeWireString(name)
            buffer.writeInteger(offset)
            buffer.writeInteger(length)
        }
    }

    /// Decodes a request body. The body must be consumed exactly.
    public static func decode(opcode rawOpcode: UInt8, body: ByteBuffer, limits: WireLimits = WireLimits()) throws(WireError) -> WireRequest {
        guard let opcode = Opcode(rawValue: rawOpcode), opcode != .error, opcode != .event else {
            throw WireError(.unknownOpcode, "opcode 0x\(String(rawOpcode, radix: 16)) is not a request")
        }
        var reader = BodyReader(body)
        let request = try decodeFields(opcode, &reader, limits: limits)
        try reader.finish()
        return request
    }

    static func decodeFields(_ opcode: Opcode, _ reader: inout BodyReader, limits: WireLimits) throws(WireError) -> WireRequest {
        switch opcode {
        case .hello:
            let minVersion = try reader.u8("minVersion")
            let maxVersion = try reader.u8("maxVersion")
            let clientName = try reader.string("clientName")
            guard clientName.utf8.count <= Hello.clientNameBytesMax else {
                throw reader.malformed("clientName", "is \(clientName.utf8.count) bytes; at most \(Hello.clientNameBytesMax)")
            }
            return .hello(Hello(minVersion: minVersion, maxVersion: maxVersion, clientName: clientName, token: try reader.string("token")))
        case .ping:
            return .ping
        case .error, .event:
            throw WireError(.unknownOpcode, "\(opcode.name) frames are sent only by the server")
        case .subscribe:
            return .subscribe(after: try reader.optionalU64("after"), account: try reader.optionalString("account"))
        case .check:
            return .check(try reader.decisionRequest())
        case .balance:
            return .balance(account: try reader.string("account"), member: try reader.optionalString("member"))
        case .balanceAt:
            return .balanceAt(account: try reader.string("account"), member: try reader.optionalString("member"), at: try reader.instant("at"))
        case .familyTransfer:
            return .familyTransfer(account: try reader.string("account"))
        case .nodeFiles:
            return .nodeFiles
        case .readNodeFile:
            return .readNodeFile(name: try reader.string("name"), offset: try reader.u64("offset"), length: try reader.u32("length"))
        case .batch:
            let count = Int(try reader.u16("count"))
            guard count >= 1, count <= limits.maxBatchItems else {
                throw WireError(.malformedFrame, "a batch carries 1 to \(limits.maxBatchItems) items, not \(count)")
            }
            var items: [WireRequest] = []
            items.reserveCapacity(count)
            for index in 0..<count {
                let raw = try reader.u8("item \(index) opcode")
                guard let itemOpcode = Opcode(rawValue: raw), itemOpcode.isBatchable else {
                    throw WireError(.malformedFrame, "item \(index): opcode 0x\(String(raw, radix: 16)) cannot be batched")
                }
                let length = Int(try reader.u32("item \(index) length"))
                var itemReader = BodyReader(try reader.slice("item \(index) body", length: length))
                items.append(try decodeFields(itemOpcode, &itemReader, limits: limits))
                do {
                    try itemReader.finish()
                } catch {
                    throw WireError(.malformedFrame, "item \(index): \(error.message)")
                }
            }
            return .batch(items)
        default:
            let key = try reader.string("key")
            return .command(try reader.commandFields(opcode), key: key)
        }
    }
}

extension Command {
    public var opcode: Opcode {
        switch self {
        case .reserve: .reserve
        case .spend: .spend
        case .commit: .commit
        case .release: .release
        case .extend: .extend
        case .createAccount: .createAccount
        case .setParent: .setParent
        case .setOverage: .setOverage
        case .setPeriod: .setPeriod
        case .setAccountCap: .setAccountCap
        case .addMember: .addMember
        case .removeMember: .removeMember
        case .setMemberCap: .setMemberCap
        case .createGroup: .createGroup
        case .deleteGroup: .deleteGroup
        case .setGroupCap: .setGroupCap
        case .addToGroup: .addToGroup
        case .removeFromGroup: .removeFromGroup
        case .addGrant: .addGrant
        case .voidGrant: .voidGrant
        case .setRate: .setRate
        case .setAccountRate: .setAccountRate
        case .setSubscription: .setSubscription
        case .setSeats: .setSeats
        case .setAlert: .setAlert
        case .removeAlert: .removeAlert
        case .setAutoRecharge: .setAutoRecharge
        case .definePlan: .definePlan
        case .provision: .provision
        case .moveFamilyOut: .moveFamilyOut
        case .moveFamilyIn: .moveFamilyIn
        case .setCap: .setCap
        case .setConcurrency: .setConcurrency
        case .reserveMetered: .reserveMetered
        case .spendMetered: .spendMetered
        case .commitMetered: .commitMetered
        case .setMeteredRate: .setMeteredRate
        }
    }
}

// MARK: - Field encodings (§3)

extension ByteBuffer {
    mutating func writeDecisionRequest(_ request: DecisionRequest) {
        writeWireString(request.account)
        writeOptionalString(request.member)
        writeWireString(request.product)
        writeInteger(request.quantity)
    }

    /// A metered request: `string account`, `opt<string> member`, `string product`, dimensions.
    mutating func writeMeteredRequest(_ request: MeteredRequest) {
        writeWireString(request.account)
        writeOptionalString(request.member)
        writeWireString(request.product)
        writeDimensions(request.dimensions)
    }

    /// `u8 count`, then that many `string dimension`, `i64 quantity`.
    mutating func writeDimensions(_ dimensions: [DimensionQuantity]) {
        writeInteger(UInt8(clamping: dimensions.count))
        for entry in dimensions.prefix(255) {
            writeWireString(entry.dimension)
            writeInteger(entry.quantity)
        }
    }

    mutating func writeHoldReference(_ reference: HoldReference) {
        writeWireString(reference.account)
        writeInteger(reference.hold)
    }

    mutating func writeOverage(_ policy: OveragePolicy) {
        switch policy {
        case .deny:
            writeInteger(UInt8(0))
            writeInteger(Int64(0))
        case .overdraft(let limit):
            writeInteger(UInt8(1))
            writeInteger(limit)
        case .finish(let percent):
            writeInteger(UInt8(2))
            writeInteger(percent)
        }
    }

    mutating func writePeriod(_ period: BillingPeriod) {
        switch period {
        case .monthly(let anchor):
            writeInteger(UInt8(0))
            writeInstant(anchor)
            writeInteger(Int64(0))
        case .fixed(let anchor, let length):
            writeInteger(UInt8(1))
            writeInstant(anchor)
            writeInteger(length)
        }
    }

    mutating func writeScope(_ scope: GrantScope) {
        switch scope {
        case .pool:
            writeInteger(UInt8(0))
        case .member(let member):
            writeInteger(UInt8(1))
            writeWireString(member)
        }
    }

    mutating func writeCommandFields(_ command: Command) {
        switch command {
        case .reserve(let reserve):
            writeDecisionRequest(reserve.request)
            writeInteger(reserve.ttlMicroseconds)
        case .spend(let spend):
            writeDecisionRequest(spend.request)
        case .commit(let commit):
            writeHoldReference(commit.hold)
            switch commit.amount {
            case .held:
                writeInteger(UInt8(0))
                writeInteger(Int64(0))
            case .quantity(let quantity):
                writeInteger(UInt8(1))
                writeInteger(quantity)
            case .credits(let credits):
                writeInteger(UInt8(2))
                writeInteger(credits)
            }
            writeBool(commit.isFinal)
        case .release(let reference):
            writeHoldReference(reference)
        case .extend(let extend):
            writeHoldReference(extend.hold)
            writeInteger(extend.ttlMicroseconds)
        case .createAccount(let create):
            writeWireString(create.account)
            writeOptionalString(create.parent)
            writeOverage(create.overage)
            if let period = create.period {
                writeInteger(UInt8(1))
                writePeriod(period)
            } else {
                writeInteger(UInt8(0))
            }
        case .setParent(let account, let parent):
            writeWireString(account)
            writeOptionalString(parent)
        case .setOverage(let account, let policy):
            writeWireString(account)
            writeOverage(policy)
        case .setPeriod(let account, let period):
            writeWireString(account)
            writePeriod(period)
        case .setAccountCap(let account, let limit):
            writeWireString(account)
            writeOptionalInteger(limit)
        case .addMember(let account, let member), .removeMember(let account, let member):
            writeWireString(account)
            writeWireString(member)
        case .setMemberCap(let account, let member, let limit):
            writeWireString(account)
            writeWireString(member)
            writeOptionalInteger(limit)
        case .createGroup(let account, let group), .deleteGroup(let account, let group):
            writeWireString(account)
            writeWireString(group)
        case .setGroupCap(let account, let group, let limit):
            writeWireString(account)
            writeWireString(group)
            writeOptionalInteger(limit)
        case .addToGroup(let account, let group, let member), .removeFromGroup(let account, let group, let member):
            writeWireString(account)
            writeWireString(group)
            writeWireString(member)
        case .addGrant(let grant):
            writeWireString(grant.account)
            writeScope(grant.scope)
            writeInteger(grant.amount)
            writeInteger(grant.priority)
            writeInstant(grant.effectiveAt)
            writeInstant(grant.expiresAt)
            writeInteger(grant.source.rawValue)
            // Products only for a scoped grant: an unscoped grant's body is what it always was.
            if !grant.products.isEmpty {
                writeInteger(UInt8(clamping: grant.products.count))
                for product in grant.products.prefix(255) { writeWireString(product) }
            }
        case .voidGrant(let account, let grant):
            writeWireString(account)
            writeInteger(grant)
        case .setRate(let product, let rate, let effectiveAt):
            writeWireString(product)
            writeInteger(rate)
            writeInstant(effectiveAt)
        case .setAccountRate(let account, let product, let rate, let effectiveAt):
            writeWireString(account)
            writeWireString(product)
            writeOptionalInteger(rate)
            writeInstant(effectiveAt)
        case .setSubscription(let account, let terms):
            writeWireString(account)
            if let terms {
                writeInteger(UInt8(1))
                writeSubscription(terms)
            } else {
                writeInteger(UInt8(0))
            }
        case .setSeats(let account, let seats, let effectiveAt):
            writeWireString(account)
            writeInteger(seats)
            writeInstant(effectiveAt)
        case .setAlert(let account, let rule):
            writeWireString(account)
            writeWireString(rule.id)
            writeOptionalString(rule.member)
            writeThreshold(rule.threshold)
        case .removeAlert(let account, let id):
            writeWireString(account)
            writeWireString(id)
        case .setAutoRecharge(let account, let rule):
            writeWireString(account)
            writeOptionalRecharge(rule)
        case .definePlan(let plan):
            writeWireString(plan.name)
            writeOverage(plan.overage)
            if let terms = plan.subscription {
                writeInteger(UInt8(1))
                writeSubscription(terms)
            } else {
                writeInteger(UInt8(0))
            }
            writeInteger(UInt8(clamping: plan.grants.count))
            for grant in plan.grants.prefix(255) {
                writeInteger(grant.amount)
                writeInteger(grant.priority)
                writeInteger(grant.source.rawValue)
                writeOptionalInteger(grant.lifetimeMicroseconds)
            }
            writeInteger(UInt8(clamping: plan.alerts.count))
            for alert in plan.alerts.prefix(255) {
                writeWireString(alert.id)
                writeThreshold(alert.threshold)
            }
            writeOptionalRecharge(plan.autoRecharge)
        case .moveFamilyOut(let account, let destination):
            writeWireString(account)
            writeWireString(destination)
        case .moveFamilyIn(let account, let transfer):
            writeWireString(account)
            writeInteger(UInt32(transfer.count))
            writeBytes(transfer)
        case .setCap(let set):
            writeWireString(set.account)
            switch set.target {
            case .account:
                writeInteger(UInt8(0))
                writeWireString("")
            case .member(let member):
                writeInteger(UInt8(1))
                writeWireString(member)
            case .group(let group):
                writeInteger(UInt8(2))
                writeWireString(group)
            }
            writeInteger(set.window.rawValue)
            writeInteger(set.mode.rawValue)
            writeOptionalInteger(set.limit)
        case .reserveMetered(let request, let ttl):
            writeMeteredRequest(request)
            writeInteger(ttl)
        case .spendMetered(let request):
            writeMeteredRequest(request)
        case .commitMetered(let hold, let dimensions, let isFinal):
            writeHoldReference(hold)
            writeDimensions(dimensions)
            writeBool(isFinal)
        case .setMeteredRate(let product, let dimension, let rate, let effectiveAt):
            writeWireString(product)
            writeWireString(dimension)
            writeInteger(rate.credits)
            writeInteger(rate.per)
            writeInstant(effectiveAt)
        case .setConcurrency(let account, let target, let limit):
            writeWireString(account)
            switch target {
            case .account:
                writeInteger(UInt8(0))
                writeWireString("")
            case .eachMember:
                writeInteger(UInt8(1))
                writeWireString("")
            case .member(let member):
                writeInteger(UInt8(2))
                writeWireString(member)
            }
            writeOptionalInteger(limit)
        case .provision(let provision):
            writeWireString(provision.account)
            writeWireString(provision.plan)
            writeOptionalString(provision.parent)
            writeInteger(provision.seats)
            writeInteger(UInt16(clamping: provision.members.count))
            for member in provision.members.prefix(65_535) { writeWireString(member) }
        }
    }

    mutating func writeThreshold(_ threshold: AlertRule.Threshold) {
        switch threshold {
        case .credits(let credits):
            writeInteger(UInt8(0))
            writeInteger(credits)
        case .percentOfAllotment(let percent):
            writeInteger(UInt8(1))
            writeInteger(percent)
        case .depleted:
            writeInteger(UInt8(2))
            writeInteger(Int64(0))
        }
    }

    mutating func writeOptionalRecharge(_ rule: AutoRecharge?) {
        guard let rule else {
            writeInteger(UInt8(0))
            return
        }
        writeInteger(UInt8(1))
        writeInteger(rule.below)
        writeInteger(rule.amount)
        writeOptionalInteger(rule.upTo)
        writeInteger(rule.maxPerPeriod)
        writeInteger(rule.priority)
        writeOptionalInteger(rule.expiresAfterMicroseconds)
    }

    /// subscription terms (§3): `u8 scope`, `i64 creditsPerSeat`, `bool prorate`, `u8 removal`,
    /// `i64 rolloverCap`, `i32 priority`.
    mutating func writeSubscription(_ terms: Subscription) {
        writeInteger(terms.scope.rawValue)
        writeInteger(terms.creditsPerSeat)
        writeBool(terms.prorate)
        writeInteger(terms.removal.rawValue)
        writeInteger(terms.rolloverCap)
        writeInteger(terms.priority)
    }
}

extension BodyReader {
    mutating func decisionRequest() throws(WireError) -> DecisionRequest {
        DecisionRequest(
            account: try string("account"), member: try optionalString("member"), product: try string("product"),
            quantity: try i64("quantity"))
    }

    mutating func meteredRequest() throws(WireError) -> MeteredRequest {
        MeteredRequest(account: try string("account"), member: try optionalString("member"), product: try string("product"), dimensions: try dimensions())
    }

    mutating func dimensions() throws(WireError) -> [DimensionQuantity] {
        var dimensions: [DimensionQuantity] = []
        for index in 0..<Int(try u8("dimension count")) {
            dimensions.append(DimensionQuantity(try string("dimension \(index)"), try i64("dimension \(index) quantity")))
        }
        return dimensions
    }

    mutating func holdReference() throws(WireError) -> HoldReference {
        HoldReference(account: try string("account"), hold: try u64("hold"))
    }

    mutating func overage() throws(WireError) -> OveragePolicy {
        let kind = try u8("overage kind")
        let value = try i64("overage value")
        switch kind {
        case 0: return .deny
        case 1: return .overdraft(limit: value)
        case 2: return .finish(percent: value)
        default: throw malformed("overage kind", "is \(kind); must be 0, 1 or 2")
        }
    }

    mutating func period() throws(WireError) -> BillingPeriod {
        let kind = try u8("period kind")
        let anchor = try instant("period anchor")
        let length = try i64("period length")
        switch kind {
        case 0: return .monthly(anchor: anchor)
        case 1: return .fixed(anchor: anchor, lengthMicroseconds: length)
        default: throw malformed("period kind", "is \(kind); must be 0 or 1")
        }
    }

    mutating func scope() throws(WireError) -> GrantScope {
        switch try u8("scope kind") {
        case 0: return .pool
        case 1: return .member(try string("scope member"))
        case let other: throw malformed("scope kind", "is \(other); must be 0 or 1")
        }
    }

    mutating func source() throws(WireError) -> GrantSource {
        let raw = try u8("source")
        guard let source = GrantSource(rawValue: raw) else { throw malformed("source", "is \(raw); must be 0 to 4") }
        return source
    }

    mutating func subscription() throws(WireError) -> Subscription {
        let rawScope = try u8("subscription scope")
        guard let scope = Subscription.Scope(rawValue: rawScope) else { throw malformed("subscription scope", "is \(rawScope); must be 0 or 1") }
        let perSeat = try i64("creditsPerSeat")
        let prorate = try bool("prorate")
        let rawRemoval = try u8("removal")
        guard let removal = Subscription.Removal(rawValue: rawRemoval) else { throw malformed("removal", "is \(rawRemoval); must be 0 or 1") }
        return Subscription(scope: scope, creditsPerSeat: perSeat, prorate: prorate, removal: removal, rolloverCap: try i64("rolloverCap"), priority: try i32("priority"))
    }

    mutating func threshold() throws(WireError) -> AlertRule.Threshold {
        let kind = try u8("threshold kind")
        let value = try i64("threshold value")
        switch kind {
        case 0: return .credits(value)
        case 1: return .percentOfAllotment(value)
        case 2: return .depleted
        default: throw malformed("threshold kind", "is \(kind); must be 0, 1 or 2")
        }
    }

    mutating func optionalRecharge() throws(WireError) -> AutoRecharge? {
        guard try present("recharge") else { return nil }
        return AutoRecharge(
            below: try i64("below"), amount: try i64("amount"), upTo: try optionalI64("upTo"), maxPerPeriod: try i64("maxPerPeriod"),
            priority: try i32("priority"), expiresAfterMicroseconds: try optionalI64("expiresAfterMicroseconds"))
    }

    mutating func commandFields(_ opcode: Opcode) throws(WireError) -> Command {
        switch opcode {
        case .reserve:
            return .reserve(Reserve(try decisionRequest(), ttlMicroseconds: try i64("ttlMicroseconds")))
        case .spend:
            return .spend(Spend(try decisionRequest()))
        case .commit:
            let hold = try holdReference()
            let kind = try u8("amount kind")
            let value = try i64("amount value")
            let amount: Commit.Amount
            switch kind {
            case 0:
                guard value == 0 else { throw malformed("amount value", "is \(value); must be 0 with kind 0 (held)") }
                amount = .held
            case 1: amount = .quantity(value)
            case 2: amount = .credits(value)
            default: throw malformed("amount kind", "is \(kind); must be 0, 1 or 2")
            }
            return .commit(Commit(hold, amount: amount, isFinal: try bool("final")))
        case .release:
            return .release(try holdReference())
        case .extend:
            return .extend(Extend(try holdReference(), ttlMicroseconds: try i64("ttlMicroseconds")))
        case .createAccount:
            let account = try string("account")
            let parent = try optionalString("parent")
            let overage = try overage()
            let period = try present("period") ? try period() : nil
            return .createAccount(CreateAccount(account: account, parent: parent, overage: overage, period: period))
        case .setParent:
            return .setParent(account: try string("account"), parent: try optionalString("parent"))
        case .setOverage:
            return .setOverage(account: try string("account"), policy: try overage())
        case .setPeriod:
            return .setPeriod(account: try string("account"), period: try period())
        case .setAccountCap:
            return .setAccountCap(account: try string("account"), limit: try optionalI64("limit"))
        case .addMember:
            return .addMember(account: try string("account"), member: try string("member"))
        case .removeMember:
            return .removeMember(account: try string("account"), member: try string("member"))
        case .setMemberCap:
            return .setMemberCap(account: try string("account"), member: try string("member"), limit: try optionalI64("limit"))
        case .createGroup:
            return .createGroup(account: try string("account"), group: try string("group"))
        case .deleteGroup:
            return .deleteGroup(account: try string("account"), group: try string("group"))
        case .setGroupCap:
            return .setGroupCap(account: try string("account"), group: try string("group"), limit: try optionalI64("limit"))
        case .addToGroup:
            return .addToGroup(account: try string("account"), group: try string("group"), member: try string("member"))
        case .removeFromGroup:
            return .removeFromGroup(account: try string("account"), group: try string("group"), member: try string("member"))
        case .addGrant:
            var grant = AddGrant(
                account: try string("account"), scope: try scope(), amount: try i64("amount"), priority: try i32("priority"),
                effectiveAt: try instant("effectiveAt"), expiresAt: try instant("expiresAt"), source: try source())
            if !isAtEnd {
                let count = Int(try u8("product count"))
                guard count > 0 else { throw malformed("product count", "is 0; leave the products out for a grant usable for any product") }
                for index in 0..<count { grant.products.append(try string("product \(index)")) }
            }
            return .addGrant(grant)
        case .voidGrant:
            return .voidGrant(account: try string("account"), grant: try u64("grant"))
        case .setRate:
            return .setRate(product: try string("product"), creditsPerUnit: try i64("creditsPerUnit"), effectiveAt: try instant("effectiveAt"))
        case .setAccountRate:
            return .setAccountRate(
                account: try string("account"), product: try string("product"), creditsPerUnit: try optionalI64("creditsPerUnit"),
                effectiveAt: try instant("effectiveAt"))
        case .setSubscription:
            let account = try string("account")
            return .setSubscription(account: account, terms: try present("terms") ? try subscription() : nil)
        case .setSeats:
            return .setSeats(account: try string("account"), seats: try i64("seats"), effectiveAt: try instant("effectiveAt"))
        case .setAlert:
            let account = try string("account")
            let id = try string("alert id")
            let member = try optionalString("member")
            return .setAlert(account: account, rule: AlertRule(id: id, member: member, threshold: try threshold()))
        case .removeAlert:
            return .removeAlert(account: try string("account"), id: try string("alert id"))
        case .setAutoRecharge:
            return .setAutoRecharge(account: try string("account"), rule: try optionalRecharge())
        case .definePlan:
            var plan = Plan(name: try string("plan"), overage: try overage())
            plan.subscription = try present("subscription") ? try subscription() : nil
            for index in 0..<Int(try u8("grant count")) {
                let amount = try i64("grant \(index) amount")
                let priority = try i32("grant \(index) priority")
                let source = try source()
                plan.grants.append(PlanGrant(amount: amount, priority: priority, source: source, lifetimeMicroseconds: try optionalI64("grant \(index) lifetime")))
            }
            for index in 0..<Int(try u8("alert count")) {
                plan.alerts.append(AlertRule(id: try string("alert \(index) id"), threshold: try threshold()))
            }
            plan.autoRecharge = try optionalRecharge()
            return .definePlan(plan)
        case .moveFamilyOut:
            return .moveFamilyOut(account: try string("account"), destination: try string("destination"))
        case .moveFamilyIn:
            let account = try string("account")
            let length = Int(try u32("transfer length"))
            var transfer = try slice("transfer", length: length)
            return .moveFamilyIn(account: account, transfer: transfer.readBytes(length: length) ?? [])
        case .setCap:
            let account = try string("account")
            let kind = try u8("target kind")
            let id = try string("target")
            let target: CapTarget
            switch kind {
            case 0:
                guard id.isEmpty else { throw malformed("target", "must be empty for the account (kind 0)") }
                target = .account
            case 1: target = .member(id)
            case 2: target = .group(id)
            default: throw malformed("target kind", "is \(kind); must be 0 (account), 1 (member) or 2 (group)")
            }
            let rawWindow = try u8("window")
            guard let window = CapWindow(rawValue: rawWindow) else { throw malformed("window", "is \(rawWindow); must be 0 (period), 1 (minute), 2 (hour) or 3 (day)") }
            let rawMode = try u8("mode")
            guard let mode = CapMode(rawValue: rawMode) else { throw malformed("mode", "is \(rawMode); must be 0 (hard) or 1 (soft)") }
            return .setCap(SetCap(account: account, target: target, window: window, mode: mode, limit: try optionalI64("limit")))
        case .reserveMetered:
            return .reserveMetered(try meteredRequest(), ttlMicroseconds: try i64("ttlMicroseconds"))
        case .spendMetered:
            return .spendMetered(try meteredRequest())
        case .commitMetered:
            return .commitMetered(hold: try holdReference(), dimensions: try dimensions(), isFinal: try bool("final"))
        case .setMeteredRate:
            return .setMeteredRate(
                product: try string("product"), dimension: try string("dimension"), rate: MeteredRate(credits: try i64("credits"), per: try i64("per")),
                effectiveAt: try instant("effectiveAt"))
        case .setConcurrency:
            let account = try string("account")
            let kind = try u8("target kind")
            let member = try string("member")
            let target: ConcurrencyTarget
            switch kind {
            case 0, 1:
                guard member.isEmpty else { throw malformed("member", "must be empty for target kind \(kind)") }
                target = kind == 0 ? .account : .eachMember
            case 2: target = .member(member)
            default: throw malformed("target kind", "is \(kind); must be 0 (account), 1 (each member) or 2 (one member)")
            }
            return .setConcurrency(account: account, target: target, limit: try optionalI64("limit"))
        case .provision:
            let account = try string("account")
            let plan = try string("plan")
            let parent = try optionalString("parent")
            let seats = try i64("seats")
            var members: [String] = []
            for index in 0..<Int(try u16("member count")) { members.append(try string("member \(index)")) }
            return .provision(Provision(account: account, plan: plan, parent: parent, seats: seats, members: members))
        case .hello, .ping, .error, .event, .subscribe, .check, .balance, .balanceAt, .batch, .familyTransfer, .nodeFiles, .readNodeFile:
            preconditionFailure("\(opcode.name) is not a command; decodeFields handles it")
        }
    }
}

/// The items of a BATCH body the decoder accepted, each item's body as it was received: the
/// server journals a command from these bytes instead of encoding it again.
public struct BatchItemBodies: Sendable {
    private var rest: ByteBuffer

    /// Nil if `body` does not start with an item count.
    public init?(_ body: ByteBuffer) {
        rest = body
        guard rest.readInteger(as: UInt16.self) != nil else { return nil }
    }

    /// The next item's body; nil past the last item (or where the bytes end early, which the
    /// decoder has already refused).
    public mutating func next() -> ByteBuffer? {
        guard let (_, length) = rest.readMultipleIntegers(as: (UInt8, UInt32).self) else { return nil }
        return rest.readSlice(length: Int(length))
    }
}
