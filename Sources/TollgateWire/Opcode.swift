/// The opcodes of proto/PROTOCOL.md §5. A response carries its request's opcode.
public enum Opcode: UInt8, Hashable, Sendable, CaseIterable {
    /// Opens a connection and agrees on a version.
    case hello = 0x01
    /// Answered with an empty body; for liveness and latency.
    case ping = 0x02
    /// Sent only by the server, when no single request can be named.
    case error = 0x03
    /// Sent only by the server: one event on a SUBSCRIBE stream, tagged with its request id.
    case event = 0x04

    // Gate operations.
    case check = 0x10
    case reserve = 0x11
    case commit = 0x12
    case release = 0x13
    case extend = 0x14
    case spend = 0x15
    case balance = 0x16
    /// Many gate operations in one frame.
    case batch = 0x17
    /// A balance as it was at a past instant, from checkpoints and the journal.
    case balanceAt = 0x18
    /// Opens a stream of events (alerts, recharges) on this connection.
    case subscribe = 0x19
    /// Admin: a family moved out of this shard, as the bytes MOVE_FAMILY_IN takes.
    case familyTransfer = 0x1A
    /// Admin, node to node: the files a new replica starts from (the newest checkpoint, the
    /// idempotency keys' runs).
    case nodeFiles = 0x1B
    /// Admin, node to node: a piece of one of those files.
    case readNodeFile = 0x1C
    /// A metered product's hold, priced by dimension (Ledger+Metered.swift).
    case reserveMetered = 0x1D
    case spendMetered = 0x1E
    /// Commits a metered hold's actual quantities at the rates it was made at.
    case commitMetered = 0x1F

    // Admin operations.
    case createAccount = 0x20
    case setParent = 0x21
    case setOverage = 0x22
    case setPeriod = 0x23
    case setAccountCap = 0x24
    case addMember = 0x25
    case removeMember = 0x26
    case setMemberCap = 0x27
    case createGroup = 0x28
    case deleteGroup = 0x29
    case setGroupCap = 0x2A
    case addToGroup = 0x2B
    case removeFromGroup = 0x2C
    case addGrant = 0x2D
    case voidGrant = 0x2E
    case setRate = 0x2F
    case setAccountRate = 0x30
    case setSubscription = 0x31
    case setSeats = 0x32
    case setAlert = 0x33
    case removeAlert = 0x34
    case setAutoRecharge = 0x35
    case definePlan = 0x36
    case provision = 0x37
    /// Admin: freezes an account family on this shard before it moves to another.
    case moveFamilyOut = 0x38
    /// Admin: adds a family read by FAMILY_TRANSFER from its old shard.
    case moveFamilyIn = 0x39
    /// Admin: a cap over a window (minute, hour, day, period), hard or soft.
    case setCap = 0x3A
    /// Admin: the most holds an account, each member, or one member may have open.
    case setConcurrency = 0x3B
    /// Admin: a metered product's dimension rate, per 1, 1,000 or 1,000,000 units.
    case setMeteredRate = 0x3C

    public var name: String {
        switch self {
        case .hello: "HELLO"
        case .ping: "PING"
        case .error: "ERROR"
        case .event: "EVENT"
        case .subscribe: "SUBSCRIBE"
        case .check: "CHECK"
        case .reserve: "RESERVE"
        case .commit: "COMMIT"
        case .release: "RELEASE"
        case .extend: "EXTEND"
        case .spend: "SPEND"
        case .balance: "BALANCE"
        case .batch: "BATCH"
        case .balanceAt: "BALANCE_AT"
        case .createAccount: "CREATE_ACCOUNT"
        case .setParent: "SET_PARENT"
        case .setOverage: "SET_OVERAGE"
        case .setPeriod: "SET_PERIOD"
        case .setAccountCap: "SET_ACCOUNT_CAP"
        case .addMember: "ADD_MEMBER"
        case .removeMember: "REMOVE_MEMBER"
        case .setMemberCap: "SET_MEMBER_CAP"
        case .createGroup: "CREATE_GROUP"
        case .deleteGroup: "DELETE_GROUP"
        case .setGroupCap: "SET_GROUP_CAP"
        case .addToGroup: "ADD_TO_GROUP"
        case .removeFromGroup: "REMOVE_FROM_GROUP"
        case .addGrant: "ADD_GRANT"
        case .voidGrant: "VOID_GRANT"
        case .setRate: "SET_RATE"
        case .setAccountRate: "SET_ACCOUNT_RATE"
        case .setSubscription: "SET_SUBSCRIPTION"
        case .setSeats: "SET_SEATS"
        case .setAlert: "SET_ALERT"
        case .removeAlert: "REMOVE_ALERT"
        case .setAutoRecharge: "SET_AUTO_RECHARGE"
        case .definePlan: "DEFINE_PLAN"
        case .provision: "PROVISION"
        case .familyTransfer: "FAMILY_TRANSFER"
        case .nodeFiles: "NODE_FILES"
        case .readNodeFile: "READ_NODE_FILE"
        case .moveFamilyOut: "MOVE_FAMILY_OUT"
        case .moveFamilyIn: "MOVE_FAMILY_IN"
        case .setCap: "SET_CAP"
        case .setConcurrency: "SET_CONCURRENCY"
        case .reserveMetered: "RESERVE_METERED"
        case .spendMetered: "SPEND_METERED"
        case .commitMetered: "COMMIT_METERED"
        case .setMeteredRate: "SET_METERED_RATE"
        }
    }

    /// The operations a BATCH may carry.
    public var isBatchable: Bool {
        switch self {
        case .check, .reserve, .commit, .release, .extend, .spend, .reserveMetered, .spendMetered, .commitMetered: true
        default: false
        }
    }
}
