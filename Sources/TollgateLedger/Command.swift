/// Every change to the ledger is one of these values, applied with `Ledger.apply(_:key:at:)`.
/// The large, rare admin cases are `indirect`, so a `Command` stays as small as a gate
/// command needs (it is copied on every decision).
/// Because commands are plain values, the journal can record them with the instant they were
/// decided at and replay them, and the wire can carry them.
public enum Command: Hashable, Sendable {
    // Gate operations.
    case reserve(Reserve)
    case spend(Spend)
    case commit(Commit)
    case release(HoldReference)
    case extend(Extend)
    /// A metered product's hold, priced by dimension at the rates in force now (Ledger+Metered.swift).
    indirect case reserveMetered(MeteredRequest, ttlMicroseconds: Int64)
    indirect case spendMetered(MeteredRequest)
    /// Commits a metered hold's actual quantities, priced at the rates it was made at.
    indirect case commitMetered(hold: HoldReference, dimensions: [DimensionQuantity], isFinal: Bool)

    // Admin operations.
    case createAccount(CreateAccount)
    case setParent(account: String, parent: String?)
    case setOverage(account: String, policy: OveragePolicy)
    case setPeriod(account: String, period: BillingPeriod)
    case setAccountCap(account: String, limit: Credits?)
    case addMember(account: String, member: String)
    case removeMember(account: String, member: String)
    case setMemberCap(account: String, member: String, limit: Credits?)
    case createGroup(account: String, group: String)
    case deleteGroup(account: String, group: String)
    case setGroupCap(account: String, group: String, limit: Credits?)
    case addToGroup(account: String, group: String, member: String)
    case removeFromGroup(account: String, group: String, member: String)
    case addGrant(AddGrant)
    case voidGrant(account: String, grant: GrantID)
    /// The rate for everyone from `effectiveAt` on. Versions in the future wait for their instant.
    case setRate(product: String, creditsPerUnit: Credits, effectiveAt: Instant)
    /// An account's own rate from `effectiveAt` on; `nil` returns it to the rate card.
    case setAccountRate(account: String, product: String, creditsPerUnit: Credits?, effectiveAt: Instant)
    /// Starts a subscription now (its credits for the rest of the current period are issued at
    /// once), or changes or ends one (`nil`) from the next period boundary on.
    indirect case setSubscription(account: String, terms: Subscription?)
    /// The number of seats of a pooled subscription, from `effectiveAt` (now if in the past).
    case setSeats(account: String, seats: Int64, effectiveAt: Instant)
    /// Adds or replaces (by id) a balance alert.
    indirect case setAlert(account: String, rule: AlertRule)
    case removeAlert(account: String, id: String)
    /// Sets (or, with nil, removes) the account's auto-recharge.
    indirect case setAutoRecharge(account: String, rule: AutoRecharge?)
    /// Defines (or replaces) a plan template. Accounts provisioned before keep what they got.
    indirect case definePlan(Plan)
    /// Creates an account on a plan, all in one step.
    indirect case provision(Provision)
    /// Freezes the family rooted at the account on this shard, recording where it goes
    /// (Ledger+Move.swift).
    case moveFamilyOut(account: String, destination: String)
    /// Adds a family read from its old shard by `familyTransfer`.
    case moveFamilyIn(account: String, transfer: [UInt8])
    /// A cap over a window, hard or soft, of the account, a member or a group (Ledger+Windows.swift).
    case setCap(SetCap)
    /// The most open holds the account, each member, or one member may have; nil removes it.
    case setConcurrency(account: String, target: ConcurrencyTarget, limit: Int64?)
    /// A metered product's dimension rate for everyone from `effectiveAt` on.
    case setMeteredRate(product: String, dimension: String, rate: MeteredRate, effectiveAt: Instant)

    /// The account the command belongs to: idempotency keys are scoped by it, and later the
    /// server checks a credential's scope against it. Rate-card changes belong to no account.
    public var account: String {
        switch self {
        case .reserve(let r): r.request.account
        case .spend(let s): s.request.account
        case .commit(let c): c.hold.account
        case .release(let h): h.account
        case .extend(let e): e.hold.account
        case .reserveMetered(let r, _), .spendMetered(let r): r.account
        case .commitMetered(let hold, _, _): hold.account
        case .createAccount(let c): c.account
        case .setParent(let a, _), .setOverage(let a, _), .setPeriod(let a, _), .setAccountCap(let a, _),
            .addMember(let a, _), .removeMember(let a, _), .setMemberCap(let a, _, _),
            .createGroup(let a, _), .deleteGroup(let a, _), .setGroupCap(let a, _, _),
            .addToGroup(let a, _, _), .removeFromGroup(let a, _, _), .voidGrant(let a, _),
            .setAccountRate(let a, _, _, _), .setSubscription(let a, _), .setSeats(let a, _, _),
            .setAlert(let a, _), .removeAlert(let a, _), .setAutoRecharge(let a, _):
            a
        case .provision(let p): p.account
        case .moveFamilyOut(let a, _), .moveFamilyIn(let a, _): a
        case .setCap(let c): c.account
        case .setConcurrency(let a, _, _): a
        case .definePlan: ""
        case .addGrant(let g): g.account
        case .setRate, .setMeteredRate: ""
        }
    }

    /// Gate commands are what an agent runtime may send; everything else is admin.
    public var isGate: Bool {
        switch self {
        case .reserve, .spend, .commit, .release, .extend, .reserveMetered, .spendMetered, .commitMetered: true
        default: false
        }
    }
}

/// What is being asked for: `quantity` units of `product`, by `member` of `account`.
/// A request without a member is charged to the account alone (no member or group caps).
public struct DecisionRequest: Hashable, Sendable {
    public var account: String
    public var member: String?
    public var product: String
    public var quantity: Int64

    public init(account: String, member: String?, product: String, quantity: Int64) {
        self.account = account
        self.member = member
        self.product = product
        self.quantity = quantity
    }
}

public struct Reserve: Hashable, Sendable {
    public var request: DecisionRequest
    /// How long the hold lives unless committed, released or extended.
    public var ttlMicroseconds: Int64

    public init(_ request: DecisionRequest, ttlMicroseconds: Int64) {
        self.request = request
        self.ttlMicroseconds = ttlMicroseconds
    }
}

/// Reserve and commit in one step.
public struct Spend: Hashable, Sendable {
    public var request: DecisionRequest

    public init(_ request: DecisionRequest) {
        self.request = request
    }
}

public typealias HoldID = UInt64
public typealias GrantID = UInt64

public struct HoldReference: Hashable, Sendable {
    public var account: String
    public var hold: HoldID

    public init(account: String, hold: HoldID) {
        self.account = account
        self.hold = hold
    }
}

public struct Commit: Hashable, Sendable {
    public enum Amount: Hashable, Sendable {
        /// Everything still held.
        case held
        /// Units of the product, priced at the rate the hold was reserved at.
        case quantity(Int64)
        /// Credits directly.
        case credits(Credits)
    }

    public var hold: HoldReference
    public var amount: Amount
    /// A final commit resolves the hold and returns what was not used. A partial commit
    /// consumes the amount and keeps the rest held, for long agent runs.
    public var isFinal: Bool

    public init(_ hold: HoldReference, amount: Amount = .held, isFinal: Bool = true) {
        self.hold = hold
        self.amount = amount
        self.isFinal = isFinal
    }
}

public struct Extend: Hashable, Sendable {
    public var hold: HoldReference
    /// The new deadline is the decision instant plus this.
    public var ttlMicroseconds: Int64

    public init(_ hold: HoldReference, ttlMicroseconds: Int64) {
        self.hold = hold
        self.ttlMicroseconds = ttlMicroseconds
    }
}

public enum OveragePolicy: Hashable, Sendable {
    /// A hard gate at zero. The default.
    case deny
    /// The balance may go down to `-limit`; what is drawn past zero is billed later.
    case overdraft(limit: Credits)
    /// A commit may exceed its hold by up to `percent` percent of the hold even when the
    /// grants are empty, so a started task can finish. Reserves stay a hard gate at zero.
    case finish(percent: Int64)
}

public struct CreateAccount: Hashable, Sendable {
    public var account: String
    public var parent: String?
    public var overage: OveragePolicy
    /// `nil` means monthly, anchored at the instant the account is created.
    public var period: BillingPeriod?

    public init(account: String, parent: String? = nil, overage: OveragePolicy = .deny, period: BillingPeriod? = nil) {
        self.account = account
        self.parent = parent
        self.overage = overage
        self.period = period
    }
}

public enum GrantScope: Hashable, Sendable {
    /// The account's shared pool: any member, and the account's children, may draw.
    case pool
    /// One member only.
    case member(String)
}

public enum GrantSource: UInt8, Hashable, Sendable, CaseIterable {
    case recurring = 0
    case topUp = 1
    case promotional = 2
    case manual = 3
    /// Included credits carried into the next period by a subscription's rollover.
    case rollover = 4
}

/// The terms of a seat subscription: every seat brings `creditsPerSeat` credits each billing
/// period of the account, pooled for the whole account or scoped to each member.
public struct Subscription: Hashable, Sendable {
    public enum Scope: UInt8, Hashable, Sendable, CaseIterable {
        /// `seats × creditsPerSeat` go to the account's pool each period; the seat count is
        /// set with `setSeats`.
        case pooled = 0
        /// Every member is a seat and gets `creditsPerSeat` of its own each period. The
        /// account may also hold pooled grants (add-ons), drawn after the member's own.
        case perMember = 1
    }

    /// What happens to a seat's credits when the seat goes mid-period.
    public enum Removal: UInt8, Hashable, Sendable, CaseIterable {
        /// Nothing is clawed back: a pooled seat's credits stay in the pool, and a removed
        /// member's unused seat credits move to the pool, until the period ends.
        case keep = 0
        /// The unused share for the rest of the period is voided.
        case clawBack = 1
    }

    public var scope: Scope
    public var creditsPerSeat: Credits
    /// A seat added mid-period brings its credits for the rest of the period only.
    public var prorate: Bool
    public var removal: Removal
    /// At a period boundary, unused included credits up to this many (per account when
    /// pooled, per member otherwise) carry into the next period; 0 lets them all expire.
    public var rolloverCap: Credits
    /// The draw priority of the included credits (lower is drawn first).
    public var priority: Int32

    public init(
        scope: Scope = .pooled, creditsPerSeat: Credits, prorate: Bool = true, removal: Removal = .keep, rolloverCap: Credits = 0,
        priority: Int32 = 0
    ) {
        self.scope = scope
        self.creditsPerSeat = creditsPerSeat
        self.prorate = prorate
        self.removal = removal
        self.rolloverCap = rolloverCap
        self.priority = priority
    }
}

public struct AddGrant: Hashable, Sendable {
    public var account: String
    public var scope: GrantScope
    public var amount: Credits
    /// Lower priorities are drawn first.
    public var priority: Int32
    public var effectiveAt: Instant
    /// `Instant.distantFuture` for a grant that never expires.
    public var expiresAt: Instant
    public var source: GrantSource
    /// The products the grant may pay for; empty: any product (Ledger+Scopes.swift).
    public var products: [String]

    public init(
        account: String, scope: GrantScope = .pool, amount: Credits, priority: Int32 = 0,
        effectiveAt: Instant, expiresAt: Instant = .distantFuture, source: GrantSource = .manual, products: [String] = []
    ) {
        self.products = products
        self.account = account
        self.scope = scope
        self.amount = amount
        self.priority = priority
        self.effectiveAt = effectiveAt
        self.expiresAt = expiresAt
        self.source = source
    }
}
