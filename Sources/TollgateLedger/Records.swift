/// The ledger's internal records. Accounts, members, groups and grants live in arrays and
/// refer to each other by slot (`Int32`), so the hot path touches no reference counts and
/// allocates nothing. `-1` means "none".

let noSlot: Int32 = -1

/// Consumption and held credits for one level of the chain, over the account's billing
/// period. `consumed` counts only the window that ends at `windowEnd`; it resets lazily the
/// first time the level is touched after that.
struct UsageCounter: Hashable, Sendable {
    var consumed: Credits = 0
    var held: Credits = 0
    var windowEnd: Instant

    init(windowEnd: Instant) {
        self.windowEnd = windowEnd
    }

    func consumed(at now: Instant) -> Credits {
        now >= windowEnd ? 0 : consumed
    }

    func used(at now: Instant) -> Credits {
        consumed(at: now).addingClamped(held)
    }

    /// Consumption only grows within a period, so it saturates rather than overflow.
    mutating func add(held heldDelta: Credits, consumed consumedDelta: Credits) {
        held += heldDelta
        consumed = consumed.addingClamped(consumedDelta)
    }

    /// `roll` then `add`, in one access to the record that holds the counter.
    mutating func record(held heldDelta: Credits, consumed consumedDelta: Credits, at now: Instant, period: BillingPeriod) {
        roll(to: now, period: period)
        add(held: heldDelta, consumed: consumedDelta)
    }

    mutating func roll(to now: Instant, period: BillingPeriod) {
        guard now >= windowEnd else { return }
        consumed = 0
        windowEnd = period.window(containing: now).end
    }

    func headroom(limit: Credits?, at now: Instant) -> Credits? {
        guard let limit else { return nil }
        return limit - used(at: now)
    }
}

struct AccountRecord: Hashable, Sendable {
    var id: String
    var parent: Int32 = noSlot
    var childCount: Int32 = 0
    var overage: OveragePolicy
    var period: BillingPeriod
    var capLimit: Credits?
    /// For a parent this includes what its children consume, so the parent's cap bounds the family.
    var usage: UsageCounter
    var memberCount = 0
    var groupSlots: [HashedString: Int32] = [:]
    /// Active pool grants in draw order.
    var poolOrder: [Int32] = []
    /// Sum of `available` over `poolOrder`.
    var poolAvailable: Credits = 0
    /// Sum of `available` over the members' own grants: with `poolAvailable`, what the account
    /// holds in all (alerts and auto-recharge watch it). Rebuilt from the members when a
    /// snapshot is read.
    var membersAvailable: Credits = 0
    /// Whether alerts or an auto-recharge watch this account (rebuilt from them on load).
    var isWatched = false
    /// Consumed with no grant behind it, under an overdraft or finish policy; billed later.
    var overdrawn: Credits = 0
    /// Held by open holds beyond the grants, under an overdraft policy.
    var overdraftHeld: Credits = 0
    var liveGrants = 0
    /// Live grants of the account (pool and members') scoped to products; rebuilt from
    /// `Ledger.grantProducts` when a snapshot or a transfer is read.
    var scopedGrants = 0
    var openHolds = 0
    /// Caps over other windows, and soft caps (Ledger+Windows.swift); empty for most accounts.
    var windows: [WindowCap] = []
    /// The most open holds the account may have at once, and each of its members (unless the
    /// member has its own bound).
    var holdLimit: Int?
    var memberHoldLimit: Int?
    var rateOverrides: [HashedString: RateHistory] = [:]

    func overdraftRemaining() -> Credits {
        guard case .overdraft(let limit) = overage else { return 0 }
        return max(0, limit - overdrawn - overdraftHeld)
    }
}

struct MemberRecord: Hashable, Sendable {
    var id: String
    var account: Int32
    var isLive = true
    var capLimit: Credits?
    var usage: UsageCounter
    var groups: [Int32] = []
    /// Active member-scoped grants in draw order.
    var grantOrder: [Int32] = []
    var available: Credits = 0
    var openHolds = 0
    var windows: [WindowCap] = []
    var holdLimit: Int?
    /// Member-scoped grants that are not yet effective; removing the member voids them.
    var pendingGrants = 0
}

struct GroupRecord: Hashable, Sendable {
    var id: String
    var account: Int32
    var isLive = true
    var capLimit: Credits?
    var usage: UsageCounter
    var memberCount = 0
    var windows: [WindowCap] = []
}

enum GrantState: UInt8, Hashable, Sendable {
    /// Not yet effective.
    case pending
    case active
    case expired
    case voided
}

struct GrantRecord: Hashable, Sendable {
    var id: GrantID
    var account: Int32
    /// `noSlot` for a pool grant.
    var member: Int32
    var memberID: String?
    var amount: Credits
    var available: Credits
    var held: Credits = 0
    var consumed: Credits = 0
    var expired: Credits = 0
    var voided: Credits = 0
    var priority: Int32
    var effectiveAt: Instant
    var expiresAt: Instant
    var source: GrantSource
    var createdAt: Instant
    var state: GrantState
    /// False once the grant can neither hand out nor take back credits and its slot is free.
    var isLive = true
    /// Usable only for the products `Ledger.grantProducts` lists for it.
    var isScoped = false

    /// Takes `amount` (at most what is available) to held or to consumed; whether a consumed
    /// grant is now spent to nothing. One access to the grant's record instead of three.
    mutating func take(_ amount: Credits, holding: Bool) -> Bool {
        available -= amount
        if holding {
            held += amount
            return false
        }
        consumed += amount
        return available == 0 && held == 0
    }

    /// Moves `amount` of what is held to consumed.
    mutating func consumeHeld(_ amount: Credits) {
        held -= amount
        consumed += amount
    }

    /// The draw order: priority ascending, then expiry ascending, then creation order.
    func drawsBefore(_ other: GrantRecord) -> Bool {
        if priority != other.priority { return priority < other.priority }
        if expiresAt != other.expiresAt { return expiresAt < other.expiresAt }
        // Then the older first. On one ledger ids follow creation, so this is id order; a
        // family moved in brings ids from another shard's space (Ledger+Move.swift).
        if createdAt != other.createdAt { return createdAt < other.createdAt }
        return id < other.id
    }

    var isBalanced: Bool {
        available >= 0 && held >= 0 && consumed >= 0 && expired >= 0 && voided >= 0
            && amount == available + held + consumed + expired + voided
    }
}

/// One part of a hold: how much it took from which grant. `grant == noSlot` is the overdraft.
struct Draw: Hashable, Sendable {
    var grant: Int32
    var amount: Credits
}

/// A hold's draws. Most holds draw from one to four grants, so those live inline and a hold
/// costs no heap allocation; more spill into an array.
struct DrawList: Hashable, Sendable {
    private(set) var count = 0
    private var first = Draw(grant: noSlot, amount: 0)
    private var second = Draw(grant: noSlot, amount: 0)
    private var third = Draw(grant: noSlot, amount: 0)
    private var fourth = Draw(grant: noSlot, amount: 0)
    private var spill: [Draw] = []

    subscript(index: Int) -> Draw {
        get {
            precondition(index >= 0 && index < count, "draw index out of range")
            switch index {
            case 0: return first
            case 1: return second
            case 2: return third
            case 3: return fourth
            default: return spill[index - 4]
            }
        }
        set {
            precondition(index >= 0 && index < count, "draw index out of range")
            switch index {
            case 0: first = newValue
            case 1: second = newValue
            case 2: third = newValue
            case 3: fourth = newValue
            default: spill[index - 4] = newValue
            }
        }
    }

    mutating func append(_ draw: Draw) {
        // Consecutive draws from the same grant merge, so the list stays short.
        if count > 0, self[count - 1].grant == draw.grant {
            self[count - 1].amount += draw.amount
            return
        }
        count += 1
        if count > 4 { spill.append(draw) } else { self[count - 1] = draw }
    }

    /// The draws exactly as stored (a consumed draw keeps its zero), for checkpoints.
    init(exactly draws: [Draw]) {
        count = draws.count
        for (index, draw) in draws.enumerated() {
            switch index {
            case 0: first = draw
            case 1: second = draw
            case 2: third = draw
            case 3: fourth = draw
            default: spill.append(draw)
            }
        }
    }

    init() {}

    var all: [Draw] { (0..<count).map { self[$0] } }

    var total: Credits {
        var sum: Credits = 0
        for index in 0..<count { sum += self[index].amount }
        return sum
    }
}

struct HoldRecord: Hashable, Sendable {
    var id: HoldID
    var account: Int32
    var member: Int32
    var product: String
    var quantity: Int64
    var creditsPerUnit: Credits
    /// What the reserve set aside.
    var original: Credits
    /// What is still set aside.
    var held: Credits
    var committed: Credits = 0
    var createdAt: Instant
    var deadline: Instant
    var draws: DrawList
    /// The groups its member was in when it was made: what it holds and what it consumes count
    /// against them until it is resolved, whatever happens to the membership meanwhile.
    var groups: [Int32] = []
}

/// A product's rate over time. An account override's `nil` version means "back to the rate
/// card" from that instant.
typealias RateHistory = VersionHistory<Credits?>

extension VersionHistory.Version where Value == Credits? {
    init(effectiveAt: Instant, creditsPerUnit: Credits?) {
        self.init(effectiveAt: effectiveAt, value: creditsPerUnit)
    }

    var creditsPerUnit: Credits? { value }
}

/// A value over time (a rate, a metered dimension's rate). Versions are sorted by `effectiveAt`.
struct VersionHistory<Value: Hashable & Sendable>: Hashable, Sendable {
    struct Version: Hashable, Sendable {
        var effectiveAt: Instant
        var value: Value
    }

    var versions: [Version] = []

    /// The version in force at `instant`, if any has taken effect.
    func version(at instant: Instant) -> Version? {
        var index = versions.count - 1
        while index >= 0 {
            if versions[index].effectiveAt <= instant { return versions[index] }
            index -= 1
        }
        return nil
    }

    /// Adds a version, replacing one at the same instant, and drops the versions that the
    /// one in force at `now` has superseded: rates are only read at the ledger's clock, which
    /// never goes back, so they can never apply again. What is kept is the version in force
    /// and those still to come.
    mutating func set(_ value: Value, from effectiveAt: Instant, now: Instant) {
        var index = versions.count
        while index > 0 && versions[index - 1].effectiveAt > effectiveAt { index -= 1 }
        if index > 0 && versions[index - 1].effectiveAt == effectiveAt {
            versions[index - 1].value = value
        } else {
            versions.insert(Version(effectiveAt: effectiveAt, value: value), at: index)
        }
        if let inForce = versions.lastIndex(where: { $0.effectiveAt <= now }), inForce > 0 {
            versions.removeFirst(inForce)
        }
    }

    /// Versions still to take effect after `now`.
    func pending(after now: Instant) -> Int {
        versions.reduce(0) { $0 + ($1.effectiveAt > now ? 1 : 0) }
    }
}
