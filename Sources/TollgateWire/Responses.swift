import NIOCore
import TollgateLedger

/// The HELLO response body (§4).
public struct HelloAnswer: Hashable, Sendable {
    public var version: UInt8
    public var serverName: String
    public var maxFrameBody: UInt32
    public var maxInFlight: UInt16
    public var maxBatchItems: UInt16
    /// The identity the server took this connection for: a name from its credentials file,
    /// never a secret.
    public var identity: String
    /// The identity's role: 1 read, 2 gate, 3 admin.
    public var role: UInt8

    public init(
        version: UInt8, serverName: String, maxFrameBody: UInt32, maxInFlight: UInt16, maxBatchItems: UInt16, identity: String = "",
        role: UInt8 = 3
    ) {
        self.version = version
        self.serverName = serverName
        self.maxFrameBody = maxFrameBody
        self.maxInFlight = maxInFlight
        self.maxBatchItems = maxBatchItems
        self.identity = identity
        self.role = role
    }

    /// The role's name, as the credentials file spells it.
    public var roleName: String {
        switch role {
        case 1: "read"
        case 2: "gate"
        case 3: "admin"
        default: "role \(role)"
        }
    }
}

/// One item of a BATCH response: the item's opcode and its response (an answer, or an error).
public struct BatchItemResponse: Hashable, Sendable {
    public var opcode: Opcode
    public var response: WireResponse

    public init(opcode: Opcode, response: WireResponse) {
        self.opcode = opcode
        self.response = response
    }
}

/// Everything the server can say, as one value per response frame.
/// Only the rare, large cases are boxed: an answer or an error is stored inline, so deciding
/// one does not allocate a box per response (it did while the whole enum was `indirect`).
public enum WireResponse: Hashable, Sendable {
    indirect case hello(HelloAnswer)
    case pong
    /// The ledger's answer to a CHECK or to a command: success, or a refusal (status 1–23).
    case answer(Answer)
    indirect case balance(Balance)
    case batch([BatchItemResponse])
    /// A protocol-level error (status 100 and up).
    case error(WireError)
    /// The answer to SUBSCRIBE: the sequence number the next new event will carry.
    case subscribed(nextSequence: UInt64)
    /// One event on a SUBSCRIBE stream (opcode EVENT).
    indirect case event(LedgerEvent)
    /// The answer to FAMILY_TRANSFER (the family's bytes) and to READ_NODE_FILE (a piece of
    /// the file).
    case transfer([UInt8])
    /// The answer to NODE_FILES.
    case files([NodeFile])

    /// The header's status: 0, a ledger refusal code, or a protocol status.
    public var status: UInt16 {
        switch self {
        case .answer(.refused(let refusal)): refusal.error.code.rawValue
        case .error(let error): error.status.rawValue
        default: 0
        }
    }

    public func frame(opcode: Opcode, requestID: UInt32) -> Frame {
        var body = ByteBuffer()
        encodeBody(into: &body)
        return Frame(opcode: opcode.rawValue, isResponse: true, status: status, requestID: requestID, body: body)
    }

    /// Appends this response as a whole frame to `buffer`: the header, then the body encoded
    /// in place, then the header's body length set to what was written. The server encodes
    /// its answers this way straight into a connection's outbound buffer (no buffer per
    /// answer, no copy); the bytes are the same as `frame(opcode:requestID:)` written out.
    public func writeFrame(opcode: Opcode, requestID: UInt32, to buffer: inout ByteBuffer) {
        let start = buffer.writerIndex
        FrameHeader(opcode: opcode.rawValue, isResponse: true, status: status, requestID: requestID, bodyLength: 0).write(to: &buffer)
        encodeBody(into: &buffer)
        buffer.setInteger(UInt32(buffer.writerIndex - start - FrameHeader.size), at: start + 12)
    }

    public func encodeBody(into buffer: inout ByteBuffer) {
        switch self {
        case .hello(let hello):
            buffer.writeInteger(hello.version)
            buffer.writeWireString(hello.serverName)
            buffer.writeInteger(hello.maxFrameBody)
            buffer.writeInteger(hello.maxInFlight)
            buffer.writeInteger(hello.maxBatchItems)
            buffer.writeWireString(hello.identity)
            buffer.writeInteger(hello.role)
        case .pong:
            break
        case .answer(let answer):
            buffer.writeAnswer(answer)
        case .balance(let balance):
            buffer.writeBalance(balance)
        case .batch(let items):
            buffer.writeInteger(UInt16(items.count))
            for item in items {
                buffer.writeInteger(item.opcode.rawValue)
                buffer.writeInteger(item.response.status)
                buffer.writeLengthPrefixed { item.response.encodeBody(into: &$0) }
            }
        case .error(let error):
            buffer.writeWireString(error.message)
        case .subscribed(let next):
            buffer.writeInteger(next)
        case .transfer(let bytes):
            buffer.writeInteger(UInt32(bytes.count))
            buffer.writeBytes(bytes)
        case .files(let files):
            buffer.writeInteger(UInt16(clamping: files.count))
            for file in files.prefix(Int(UInt16.max)) {
                buffer.writeWireString(file.name)
                buffer.writeInteger(file.bytes)
            }
        case .event(let event):
            buffer.writeInteger(event.sequence)
            buffer.writeInstant(event.at)
            buffer.writeWireString(event.account)
            buffer.writeOptionalString(event.member)
            switch event.kind {
            case .alert(let id, let threshold, let balance):
                buffer.writeInteger(UInt8(0))
                buffer.writeWireString(id)
                buffer.writeInteger(threshold)
                buffer.writeInteger(balance)
            case .depleted(let id, let balance):
                buffer.writeInteger(UInt8(1))
                buffer.writeWireString(id)
                buffer.writeInteger(balance)
            case .recharged(let grant, let amount, let balance):
                buffer.writeInteger(UInt8(2))
                buffer.writeInteger(grant)
                buffer.writeInteger(amount)
                buffer.writeInteger(balance)
            case .softLimit(let level, let subject, let window, let limit, let used):
                buffer.writeInteger(UInt8(3))
                buffer.writeInteger(level.rawValue)
                buffer.writeWireString(subject)
                buffer.writeInteger(window.rawValue)
                buffer.writeInteger(limit)
                buffer.writeInteger(used)
            }
        }
    }

    /// Decodes a response body, given the opcode and status from its header.
    public static func decode(opcode rawOpcode: UInt8, status: UInt16, body: ByteBuffer) throws(WireError) -> WireResponse {
        guard let opcode = Opcode(rawValue: rawOpcode) else {
            throw WireError(.unknownOpcode, "opcode 0x\(String(rawOpcode, radix: 16)) is not a response")
        }
        var reader = BodyReader(body)
        let response = try decodeFields(opcode, status: status, &reader)
        try reader.finish()
        return response
    }

    static func decodeFields(_ opcode: Opcode, status: UInt16, _ reader: inout BodyReader) throws(WireError) -> WireResponse {
        if status >= 100 {
            guard let protocolStatus = ProtocolStatus(rawValue: status) else {
                throw WireError(.malformedFrame, "unknown status \(status)")
            }
            return .error(WireError(protocolStatus, try reader.string("message")))
        }
        if status != 0 {
            guard let code = LedgerError.Code(rawValue: status) else { throw WireError(.malformedFrame, "unknown status \(status)") }
            return .answer(.refused(try reader.refusal(code)))
        }
        switch opcode {
        case .hello:
            return .hello(
                HelloAnswer(
                    version: try reader.u8("version"), serverName: try reader.string("serverName"),
                    maxFrameBody: try reader.u32("maxFrameBody"), maxInFlight: try reader.u16("maxInFlight"),
                    maxBatchItems: try reader.u16("maxBatchItems"), identity: try reader.string("identity"), role: try reader.u8("role")))
        case .ping:
            return .pong
        case .subscribe:
            return .subscribed(nextSequence: try reader.u64("nextSequence"))
        case .nodeFiles:
            var files: [NodeFile] = []
            for index in 0..<Int(try reader.u16("file count")) {
                files.append(NodeFile(name: try reader.string("file \(index) name"), bytes: try reader.u64("file \(index) bytes")))
            }
            return .files(files)
        case .familyTransfer, .readNodeFile:
            let length = Int(try reader.u32("transfer length"))
            var bytes = try reader.slice("transfer", length: length)
            return .transfer(bytes.readBytes(length: length) ?? [])
        case .event:
            let sequence = try reader.u64("sequence")
            let at = try reader.instant("at")
            let account = try reader.string("account")
            let member = try reader.optionalString("member")
            let kind: LedgerEvent.Kind
            switch try reader.u8("event kind") {
            case 0: kind = .alert(id: try reader.string("alert id"), threshold: try reader.i64("threshold"), balance: try reader.i64("balance"))
            case 1: kind = .depleted(id: try reader.string("alert id"), balance: try reader.i64("balance"))
            case 2: kind = .recharged(grant: try reader.u64("grant"), amount: try reader.i64("amount"), balance: try reader.i64("balance"))
            case 3:
                let rawLevel = try reader.u8("level")
                guard let level = LedgerError.Level(rawValue: rawLevel) else { throw WireError(.malformedFrame, "level is \(rawLevel); must be 0 to 5") }
                let subject = try reader.string("subject")
                let rawWindow = try reader.u8("window")
                guard let window = CapWindow(rawValue: rawWindow) else { throw WireError(.malformedFrame, "window is \(rawWindow); must be 0 to 3") }
                kind = .softLimit(level: level, subject: subject, window: window, limit: try reader.i64("limit"), used: try reader.i64("used"))
            case let other: throw WireError(.malformedFrame, "event kind is \(other); must be 0 to 3")
            }
            return .event(LedgerEvent(sequence: sequence, at: at, account: account, member: member, kind: kind))
        case .error:
            throw WireError(.malformedFrame, "an ERROR frame must carry a status of 100 or more")
        case .check, .reserve, .spend, .reserveMetered, .spendMetered:
            return .answer(.decision(try reader.decision()))
        case .commit, .commitMetered:
            return .answer(
                .committed(
                    CommitResult(
                        hold: try reader.u64("hold"), committed: try reader.i64("committed"), returned: try reader.i64("returned"),
                        stillHeld: try reader.i64("stillHeld"), headroom: try reader.headroom())))
        case .release:
            return .answer(.released(ReleaseResult(hold: try reader.u64("hold"), released: try reader.i64("released"), headroom: try reader.headroom())))
        case .extend:
            return .answer(.extended(ExtendResult(hold: try reader.u64("hold"), deadline: try reader.instant("deadline"), headroom: try reader.headroom())))
        case .balance, .balanceAt:
            return .balance(try reader.balance())
        case .batch:
            let count = Int(try reader.u16("count"))
            var items: [BatchItemResponse] = []
            for index in 0..<count {
                let raw = try reader.u8("item \(index) opcode")
                guard let itemOpcode = Opcode(rawValue: raw), itemOpcode.isBatchable else {
                    throw WireError(.malformedFrame, "item \(index): opcode 0x\(String(raw, radix: 16)) cannot be batched")
                }
                let itemStatus = try reader.u16("item \(index) status")
                let length = Int(try reader.u32("item \(index) length"))
                var itemReader = BodyReader(try reader.slice("item \(index) body", length: length))
                let response = try decodeFields(itemOpcode, status: itemStatus, &itemReader)
                try itemReader.finish()
                items.append(BatchItemResponse(opcode: itemOpcode, response: response))
            }
            return .batch(items)
        case .addGrant:
            return .answer(.grantAdded(try reader.u64("grant")))
        default:
            return .answer(.done)
        }
    }
}

// MARK: - Answer encodings (§5, §7.2)

extension ByteBuffer {
    mutating func writeHeadroom(_ headroom: Headroom) {
        var mask: UInt8 = 0
        if headroom.member != nil { mask |= 1 }
        if headroom.group != nil { mask |= 2 }
        if headroom.account != nil { mask |= 4 }
        if headroom.parent != nil { mask |= 8 }
        writeInteger(mask)
        if let member = headroom.member { writeInteger(member) }
        if let group = headroom.group {
            writeInteger(group)
            writeWireString(headroom.groupID ?? "")
        }
        if let account = headroom.account { writeInteger(account) }
        if let parent = headroom.parent { writeInteger(parent) }
        writeInteger(headroom.funds)
    }

    mutating func writeAnswer(_ answer: Answer) {
        switch answer {
        case .decision(let decision):
            if let hold = decision.hold {
                writeInteger(UInt8(1))
                writeInteger(hold)
            } else {
                writeInteger(UInt8(0))
            }
            writeInteger(decision.cost)
            writeInteger(decision.creditsPerUnit)
            writeOptionalInteger(decision.deadline?.microsecondsSinceEpoch)
            writeHeadroom(decision.headroom)
        case .committed(let result):
            writeInteger(result.hold)
            writeInteger(result.committed)
            writeInteger(result.returned)
            writeInteger(result.stillHeld)
            writeHeadroom(result.headroom)
        case .released(let result):
            writeInteger(result.hold)
            writeInteger(result.released)
            writeHeadroom(result.headroom)
        case .extended(let result):
            writeInteger(result.hold)
            writeInstant(result.deadline)
            writeHeadroom(result.headroom)
        case .grantAdded(let id):
            writeInteger(id)
        case .done:
            break
        case .refused(let refusal):
            writeInteger(refusal.error.level.rawValue)
            writeWireString(refusal.error.subject)
            if let headroom = refusal.headroom {
                writeInteger(UInt8(1))
                writeHeadroom(headroom)
            } else {
                writeInteger(UInt8(0))
            }
        }
    }

    mutating func writeBalance(_ balance: Balance) {
        writeWireString(balance.account)
        writeOptionalString(balance.member)
        writeInstant(balance.at)
        writeInstant(balance.periodStart)
        writeInstant(balance.periodEnd)
        writeHeadroom(balance.headroom)
        writeInteger(UInt16(balance.levels.count))
        for level in balance.levels {
            writeInteger(level.level.rawValue)
            writeWireString(level.subject)
            writeOptionalInteger(level.limit)
            writeInteger(level.consumed)
            writeInteger(level.held)
            writeOptionalInteger(level.headroom)
        }
        writeInteger(balance.funds.member)
        writeInteger(balance.funds.pool)
        writeInteger(balance.funds.parentPool)
        writeOverage(balance.funds.overage)
        writeInteger(balance.funds.overdrawn)
        writeInteger(balance.funds.overdraftHeld)
        writeInteger(UInt16(balance.grants.count))
        for grant in balance.grants {
            writeInteger(grant.id)
            writeWireString(grant.account)
            writeScope(grant.scope)
            writeInteger(grant.amount)
            writeInteger(grant.available)
            writeInteger(grant.held)
            writeInteger(grant.consumed)
            writeInteger(grant.expired)
            writeInteger(grant.voided)
            writeInteger(grant.priority)
            writeInstant(grant.effectiveAt)
            writeInstant(grant.expiresAt)
            writeInteger(grant.source.rawValue)
            writeInteger(grant.state.rawValue)
        }
        writeInteger(UInt32(clamping: balance.openHolds))
        if let subscription = balance.subscription {
            writeInteger(UInt8(1))
            writeSubscription(subscription.terms)
            writeInteger(subscription.seats)
            writeInstant(subscription.periodStart)
            writeInstant(subscription.periodEnd)
            switch subscription.nextTerms {
            case .none: writeInteger(UInt8(0))
            case .some(.none): writeInteger(UInt8(1))
            case .some(.some(let next)):
                writeInteger(UInt8(2))
                writeSubscription(next)
            }
            if let pending = subscription.pendingSeats {
                writeInteger(UInt8(1))
                writeInstant(pending.at)
                writeInteger(pending.seats)
            } else {
                writeInteger(UInt8(0))
            }
        } else {
            writeInteger(UInt8(0))
        }
        writeInteger(balance.burn.lastMinute)
        writeInteger(balance.burn.lastHour)
        let caps = balance.levels.enumerated().flatMap { index, level in level.caps.map { (index, $0) } }
        writeInteger(UInt16(clamping: caps.count))
        for (index, cap) in caps.prefix(Int(UInt16.max)) {
            writeInteger(UInt8(clamping: index))
            writeInteger(cap.window.rawValue)
            writeInteger(cap.mode.rawValue)
            writeInteger(cap.limit)
            writeInteger(cap.used)
            writeInstant(cap.windowEnd)
        }
        writeOptionalInteger(balance.openHoldsLimit.map { Int64($0) })
        let scoped = balance.grants.enumerated().filter { !$0.element.products.isEmpty }
        writeInteger(UInt16(clamping: scoped.count))
        for (index, grant) in scoped.prefix(Int(UInt16.max)) {
            writeInteger(UInt16(clamping: index))
            writeInteger(UInt8(clamping: grant.products.count))
            for product in grant.products.prefix(255) { writeWireString(product) }
        }
    }
}

extension BodyReader {
    mutating func headroom() throws(WireError) -> Headroom {
        let mask = try u8("headroom mask")
        guard mask & ~0x0F == 0 else { throw malformed("headroom mask", "has reserved bits set (0x\(String(mask, radix: 16)))") }
        var headroom = Headroom(funds: 0)
        if mask & 1 != 0 { headroom.member = try i64("headroom member") }
        if mask & 2 != 0 {
            headroom.group = try i64("headroom group")
            headroom.groupID = try string("headroom group id")
        }
        if mask & 4 != 0 { headroom.account = try i64("headroom account") }
        if mask & 8 != 0 { headroom.parent = try i64("headroom parent") }
        headroom.funds = try i64("headroom funds")
        return headroom
    }

    mutating func decision() throws(WireError) -> Decision {
        let hold: HoldID? = try present("hold") ? try u64("hold") : nil
        let cost = try i64("cost")
        let rate = try i64("creditsPerUnit")
        let deadline = try optionalI64("deadline").map { Instant(microsecondsSinceEpoch: $0) }
        return Decision(hold: hold, cost: cost, creditsPerUnit: rate, deadline: deadline, headroom: try headroom())
    }

    mutating func refusal(_ code: LedgerError.Code) throws(WireError) -> Refusal {
        let rawLevel = try u8("level")
        guard let level = LedgerError.Level(rawValue: rawLevel) else { throw malformed("level", "is \(rawLevel); must be 0 to 5") }
        let subject = try string("subject")
        let headroom = try present("headroom") ? try headroom() : nil
        return Refusal(LedgerError(code, level: level, subject: subject), headroom: headroom)
    }

    mutating func balance() throws(WireError) -> Balance {
        let account = try string("account")
        let member = try optionalString("member")
        let at = try instant("at")
        let periodStart = try instant("periodStart")
        let periodEnd = try instant("periodEnd")
        let headroom = try headroom()
        let levelCount = Int(try u16("levelCount"))
        var levels: [LevelUsage] = []
        for index in 0..<levelCount {
            let rawLevel = try u8("level \(index)")
            guard let level = LedgerError.Level(rawValue: rawLevel) else { throw malformed("level \(index)", "is \(rawLevel)") }
            levels.append(
                LevelUsage(
                    level: level, subject: try string("level \(index) subject"), limit: try optionalI64("level \(index) limit"),
                    consumed: try i64("level \(index) consumed"), held: try i64("level \(index) held"),
                    headroom: try optionalI64("level \(index) headroom")))
        }
        let funds = Funds(
            member: try i64("funds member"), pool: try i64("funds pool"), parentPool: try i64("funds parentPool"),
            overage: try overage(), overdrawn: try i64("funds overdrawn"), overdraftHeld: try i64("funds overdraftHeld"))
        let grantCount = Int(try u16("grantCount"))
        var grants: [GrantView] = []
        for index in 0..<grantCount {
            let id = try u64("grant \(index) id")
            let grantAccount = try string("grant \(index) account")
            let scope = try scope()
            let amount = try i64("grant \(index) amount")
            let available = try i64("grant \(index) available")
            let held = try i64("grant \(index) held")
            let consumed = try i64("grant \(index) consumed")
            let expired = try i64("grant \(index) expired")
            let voided = try i64("grant \(index) voided")
            let priority = try i32("grant \(index) priority")
            let effectiveAt = try instant("grant \(index) effectiveAt")
            let expiresAt = try instant("grant \(index) expiresAt")
            let source = try source()
            let rawState = try u8("grant \(index) state")
            guard let state = GrantView.State(rawValue: rawState) else { throw malformed("grant \(index) state", "is \(rawState)") }
            grants.append(
                GrantView(
                    id: id, account: grantAccount, scope: scope, amount: amount, available: available, held: held, consumed: consumed,
                    expired: expired, voided: voided, priority: priority, effectiveAt: effectiveAt, expiresAt: expiresAt,
                    source: source, state: state))
        }
        let openHolds = Int(try u32("openHolds"))
        var subscription: SubscriptionView?
        if try present("subscription") {
            let terms = try self.subscription()
            let seats = try i64("seats")
            let start = try instant("subscription periodStart")
            let end = try instant("subscription periodEnd")
            let next: Subscription??
            switch try u8("next terms kind") {
            case 0: next = .none
            case 1: next = .some(.none)
            case 2: next = .some(try self.subscription())
            case let other: throw malformed("next terms kind", "is \(other); must be 0, 1 or 2")
            }
            let pending = try present("pending seats") ? SubscriptionView.SeatChange(at: try instant("pending at"), seats: try i64("pending seats")) : nil
            subscription = SubscriptionView(terms: terms, seats: seats, periodStart: start, periodEnd: end, nextTerms: next, pendingSeats: pending)
        }
        let burn = BurnRate(lastMinute: try i64("burnLastMinute"), lastHour: try i64("burnLastHour"))
        for index in 0..<Int(try u16("capCount")) {
            let levelIndex = Int(try u8("cap \(index) level"))
            guard levelIndex < levels.count else { throw malformed("cap \(index) level", "is \(levelIndex); there are \(levels.count) levels") }
            let rawWindow = try u8("cap \(index) window")
            guard let window = CapWindow(rawValue: rawWindow) else { throw malformed("cap \(index) window", "is \(rawWindow); must be 0 to 3") }
            let rawMode = try u8("cap \(index) mode")
            guard let mode = CapMode(rawValue: rawMode) else { throw malformed("cap \(index) mode", "is \(rawMode); must be 0 or 1") }
            levels[levelIndex].caps.append(
                CapView(window: window, mode: mode, limit: try i64("cap \(index) limit"), used: try i64("cap \(index) used"), windowEnd: try instant("cap \(index) windowEnd")))
        }
        let openHoldsLimit = try optionalI64("openHoldsLimit")
        guard (openHoldsLimit ?? 0) >= 0 else { throw malformed("openHoldsLimit", "is negative") }
        for index in 0..<Int(try u16("scopedGrantCount")) {
            let grant = Int(try u16("scoped grant \(index)"))
            guard grant < grants.count else { throw malformed("scoped grant \(index)", "is \(grant); there are \(grants.count) grants") }
            let count = Int(try u8("scoped grant \(index) product count"))
            for product in 0..<count { grants[grant].products.append(try string("scoped grant \(index) product \(product)")) }
        }
        var balance = Balance(
            account: account, member: member, at: at, periodStart: periodStart, periodEnd: periodEnd, headroom: headroom,
            levels: levels, funds: funds, grants: grants, openHolds: openHolds, subscription: subscription, burn: burn)
        balance.openHoldsLimit = openHoldsLimit.map { Int(truncatingIfNeeded: $0) }
        return balance
    }
}

/// A file a new replica starts from (NODE_FILES): its name in the node's data directory
/// (`checkpoint-….tgc`, `keys-….tgk`) and its size.
public struct NodeFile: Hashable, Sendable {
    public var name: String
    public var bytes: UInt64

    public init(name: String, bytes: UInt64) {
        self.name = name
        self.bytes = bytes
    }
}
