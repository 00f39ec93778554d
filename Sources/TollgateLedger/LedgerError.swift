/// Why a request was refused: a code from a fixed table, the level of the chain that refused
/// (member, group, account, parent, or the request itself), and the subject, such as the
/// group's id or the name of the limit that was hit.
public struct LedgerError: Error, Hashable, Sendable, CustomStringConvertible {
    public var code: Code
    public var level: Level
    public var subject: String

    public init(_ code: Code, level: Level, subject: String = "") {
        self.code = code
        self.level = level
        self.subject = subject
    }

    /// Stable numeric codes; the wire carries the raw value. New codes are only ever added.
    public enum Code: UInt16, Hashable, Sendable, CaseIterable {
        case insufficientFunds = 1
        case memberCap = 2
        case groupCap = 3
        case accountCap = 4
        case parentCap = 5
        case unknownProduct = 6
        case unknownAccount = 7
        case unknownMember = 8
        case unknownGroup = 9
        case unknownHold = 10
        case unknownGrant = 11
        case holdExpired = 12
        case holdCommitted = 13
        case holdReleased = 14
        case idempotencyConflict = 15
        case limitReached = 16
        case invalidArgument = 17
        case alreadyExists = 18
        case inUse = 19
        case amountOutOfRange = 20
        case grantNotLive = 21
        case notInGroup = 22
        /// The account's family is on another shard now (Ledger+Move.swift); the subject names it.
        case familyMoved = 23
        /// A reserve would open more holds than the account or member may have open at once.
        case concurrencyLimit = 24

        /// The status name of proto/PROTOCOL.md §7.1, for logs, metrics labels and `--json`.
        public var identifier: String {
            switch self {
            case .insufficientFunds: "insufficientFunds"
            case .memberCap: "memberCap"
            case .groupCap: "groupCap"
            case .accountCap: "accountCap"
            case .parentCap: "parentCap"
            case .unknownProduct: "unknownProduct"
            case .unknownAccount: "unknownAccount"
            case .unknownMember: "unknownMember"
            case .unknownGroup: "unknownGroup"
            case .unknownHold: "unknownHold"
            case .unknownGrant: "unknownGrant"
            case .holdExpired: "holdExpired"
            case .holdCommitted: "holdCommitted"
            case .holdReleased: "holdReleased"
            case .idempotencyConflict: "idempotencyConflict"
            case .limitReached: "limitReached"
            case .invalidArgument: "invalidArgument"
            case .alreadyExists: "alreadyExists"
            case .inUse: "inUse"
            case .amountOutOfRange: "amountOutOfRange"
            case .grantNotLive: "grantNotLive"
            case .notInGroup: "notInGroup"
            case .familyMoved: "familyMoved"
            case .concurrencyLimit: "concurrencyLimit"
            }
        }

        public var name: String {
            switch self {
            case .insufficientFunds: "insufficient funds"
            case .memberCap: "member cap reached"
            case .groupCap: "group cap reached"
            case .accountCap: "account cap reached"
            case .parentCap: "parent cap reached"
            case .unknownProduct: "unknown product"
            case .unknownAccount: "unknown account"
            case .unknownMember: "unknown member"
            case .unknownGroup: "unknown group"
            case .unknownHold: "unknown hold"
            case .unknownGrant: "unknown grant"
            case .holdExpired: "hold expired"
            case .holdCommitted: "hold already committed"
            case .holdReleased: "hold already released"
            case .idempotencyConflict: "idempotency key reused with different fields"
            case .limitReached: "limit reached"
            case .invalidArgument: "invalid argument"
            case .alreadyExists: "already exists"
            case .inUse: "in use"
            case .amountOutOfRange: "amount out of range"
            case .grantNotLive: "grant is expired or voided (credits are still held on it)"
            case .notInGroup: "member is not in the group"
            case .familyMoved: "account family moved to another shard"
            case .concurrencyLimit: "too many open holds"
            }
        }
    }

    public enum Level: UInt8, Hashable, Sendable, CaseIterable {
        case request = 0
        case member = 1
        case group = 2
        case account = 3
        case parent = 4
        case ledger = 5

        public var name: String {
            switch self {
            case .request: "request"
            case .member: "member"
            case .group: "group"
            case .account: "account"
            case .parent: "parent"
            case .ledger: "ledger"
            }
        }
    }

    public var description: String {
        subject.isEmpty ? "\(code.name) (\(level.name))" : "\(code.name) (\(level.name) \(subject))"
    }

    /// Refusals that say something about the request's inputs, which a retry with the same
    /// key will get again anyway, and refusals about capacity, which a retry may not get.
    /// Neither is remembered against the idempotency key, and neither changes the ledger.
    public var isRemembered: Bool {
        switch code {
        case .invalidArgument, .amountOutOfRange: false
        case .limitReached: false
        // Not an answer to remember: the request is answered where the family is now.
        case .familyMoved: false
        default: true
        }
    }
}
