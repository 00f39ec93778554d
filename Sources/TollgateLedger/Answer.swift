/// The result of applying a command. A retry with the same idempotency key gets this same
/// value back.
public enum Answer: Hashable, Sendable {
    /// A reserve or a spend that was allowed.
    case decision(Decision)
    case committed(CommitResult)
    case released(ReleaseResult)
    case extended(ExtendResult)
    case grantAdded(GrantID)
    /// An admin command that succeeded and has nothing more to say.
    case done
    case refused(Refusal)

    public var refusal: Refusal? {
        if case .refused(let refusal) = self { return refusal }
        return nil
    }

    public var isRefused: Bool { refusal != nil }
}

public struct Refusal: Error, Hashable, Sendable {
    public var error: LedgerError
    /// The headroom at each level when the refusal could name the account (and member).
    public var headroom: Headroom?

    public init(_ error: LedgerError, headroom: Headroom? = nil) {
        self.error = error
        self.headroom = headroom
    }
}

/// How many more credits each level of the chain allows, after the decision.
/// `nil` means the level has no cap.
public struct Headroom: Hashable, Sendable {
    public var member: Credits?
    /// The tightest of the member's groups, and which group that is.
    public var group: Credits?
    public var groupID: String?
    public var account: Credits?
    public var parent: Credits?
    /// Credits the grants (own, pooled and the parent's pool) and the overdraft allowance can
    /// still cover for this member.
    public var funds: Credits

    public init(member: Credits? = nil, group: Credits? = nil, groupID: String? = nil, account: Credits? = nil, parent: Credits? = nil, funds: Credits) {
        self.member = member
        self.group = group
        self.groupID = groupID
        self.account = account
        self.parent = parent
        self.funds = funds
    }

    /// The most a single reserve could get right now: the smallest headroom of all levels.
    public var spendable: Credits {
        min(funds, member ?? .max, group ?? .max, account ?? .max, parent ?? .max)
    }
}

public struct Decision: Hashable, Sendable {
    /// Set for a reserve; `nil` for a check or a spend.
    public var hold: HoldID?
    public var cost: Credits
    /// The credits-per-unit rate the cost was priced at.
    public var creditsPerUnit: Credits
    /// When the hold expires, for a reserve.
    public var deadline: Instant?
    public var headroom: Headroom

    public init(hold: HoldID?, cost: Credits, creditsPerUnit: Credits, deadline: Instant?, headroom: Headroom) {
        self.hold = hold
        self.cost = cost
        self.creditsPerUnit = creditsPerUnit
        self.deadline = deadline
        self.headroom = headroom
    }
}

public struct CommitResult: Hashable, Sendable {
    public var hold: HoldID
    /// Credits consumed by this commit.
    public var committed: Credits
    /// Credits handed back to the grants (or to the overdraft) because the final commit was
    /// smaller than what was held.
    public var returned: Credits
    /// Still held after a partial commit; zero after a final one.
    public var stillHeld: Credits
    public var headroom: Headroom

    public init(hold: HoldID, committed: Credits, returned: Credits, stillHeld: Credits, headroom: Headroom) {
        self.hold = hold
        self.committed = committed
        self.returned = returned
        self.stillHeld = stillHeld
        self.headroom = headroom
    }
}

public struct ReleaseResult: Hashable, Sendable {
    public var hold: HoldID
    public var released: Credits
    public var headroom: Headroom

    public init(hold: HoldID, released: Credits, headroom: Headroom) {
        self.hold = hold
        self.released = released
        self.headroom = headroom
    }
}

public struct ExtendResult: Hashable, Sendable {
    public var hold: HoldID
    public var deadline: Instant
    public var headroom: Headroom

    public init(hold: HoldID, deadline: Instant, headroom: Headroom) {
        self.hold = hold
        self.deadline = deadline
        self.headroom = headroom
    }
}

/// How a hold ended, remembered for a while so that late requests get a precise answer.
public enum HoldResolution: UInt8, Hashable, Sendable {
    case committed = 0
    case released = 1
    case expired = 2

    var error: LedgerError.Code {
        switch self {
        case .committed: .holdCommitted
        case .released: .holdReleased
        case .expired: .holdExpired
        }
    }
}
