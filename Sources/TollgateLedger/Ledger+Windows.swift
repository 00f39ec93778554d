/// Caps over several windows at once, soft caps that only notify, and limits on how many
/// holds may be open at once.
///
/// Every level (member, group, account, and the account as a parent) has its billing-period
/// cap, `capLimit`, on the decision path as before. SET_CAP adds caps over other windows
/// (a minute, an hour, a UTC day) and soft caps over any window; they live in the level's
/// `windows`, which is empty unless some are set, so a decision that uses none pays one
/// emptiness check per level. A hard cap refuses what would take its window's use (consumed
/// plus held) past its limit, and the refusal names the window; a soft cap never refuses and
/// fires a `softLimit` event once each time its window's use goes past its limit (it re-arms
/// when the use is back at or under the limit, or when the window rolls).
///
/// Windows roll by the ledger's clock, aligned on UTC (minute, hour and day boundaries since
/// the Unix epoch) or on the account's billing period, so replaying the journal rolls them at
/// the same instants. A window cap counts what is decided from the moment it is set: what was
/// consumed earlier in its current window is not known to it (the billing-period hard cap is
/// the exception, as the period's consumption is always counted; a soft cap over the period
/// counts from when it is set, like the others). What is held when it is set counts at once.
///
/// SET_CONCURRENCY bounds the open holds of an account, of each of its members, or of one
/// member; a reserve past the bound is refused with `concurrencyLimit`. Spends open no hold
/// and are not counted.

/// A flag that equality and hashing ignore: a hint for the decision path, not state (a
/// ledger read back from a snapshot may have it clear where the one that wrote it had it set).
struct RulesHint: Hashable, Sendable {
    var value = false
    static func == (lhs: RulesHint, rhs: RulesHint) -> Bool { true }
    func hash(into hasher: inout Hasher) {}
}

/// The window a cap counts over.
public enum CapWindow: UInt8, Hashable, Sendable, CaseIterable {
    /// The account's billing period (a parent's own period for a parent's cap).
    case period = 0
    case minute = 1
    case hour = 2
    /// A UTC day.
    case day = 3

    public var name: String {
        switch self {
        case .period: "period"
        case .minute: "minute"
        case .hour: "hour"
        case .day: "day"
        }
    }

    public init?(name: String) {
        guard let window = CapWindow.allCases.first(where: { $0.name == name }) else { return nil }
        self = window
    }

    /// The half-open window containing `now`.
    func bounds(containing now: Instant, period: BillingPeriod) -> (start: Instant, end: Instant) {
        switch self {
        case .period: period.window(containing: now)
        case .minute: BillingPeriod.fixed(anchor: .epoch, lengthMicroseconds: Microseconds.perMinute).window(containing: now)
        case .hour: BillingPeriod.fixed(anchor: .epoch, lengthMicroseconds: Microseconds.perHour).window(containing: now)
        case .day: BillingPeriod.fixed(anchor: .epoch, lengthMicroseconds: Microseconds.perDay).window(containing: now)
        }
    }
}

public enum CapMode: UInt8, Hashable, Sendable, CaseIterable {
    /// Refuses what would go past the limit.
    case hard = 0
    /// Never refuses; fires a `softLimit` event when the limit is passed.
    case soft = 1

    public var name: String { self == .hard ? "hard" : "soft" }
}

/// Whose cap SET_CAP sets.
public enum CapTarget: Hashable, Sendable {
    case account
    case member(String)
    case group(String)
}

/// SET_CAP: a cap over a window, hard or soft; `limit` nil removes it.
public struct SetCap: Hashable, Sendable {
    public var account: String
    public var target: CapTarget
    public var window: CapWindow
    public var mode: CapMode
    public var limit: Credits?

    public init(account: String, target: CapTarget, window: CapWindow, mode: CapMode = .hard, limit: Credits?) {
        self.account = account
        self.target = target
        self.window = window
        self.mode = mode
        self.limit = limit
    }
}

/// Whose open holds SET_CONCURRENCY bounds.
public enum ConcurrencyTarget: Hashable, Sendable {
    /// All the account's open holds together.
    case account
    /// Each member of the account, unless the member has a bound of its own.
    case eachMember
    case member(String)
}

/// One cap over a window other than the billing period, or a soft cap, with its own counter.
struct WindowCap: Hashable, Sendable {
    var window: CapWindow
    var mode: CapMode
    var limit: Credits
    var usage: UsageCounter
    /// A soft cap that has fired and has not yet re-armed.
    var fired = false

    /// What the window allows still: its limit less its use.
    func headroom(at now: Instant) -> Credits { limit - usage.used(at: now) }

    mutating func roll(to now: Instant, period: BillingPeriod) {
        guard now >= usage.windowEnd else { return }
        usage.consumed = 0
        usage.windowEnd = window.bounds(containing: now, period: period).end
    }
}

/// A cap as reads show it.
public struct CapView: Hashable, Sendable {
    public var window: CapWindow
    public var mode: CapMode
    public var limit: Credits
    /// Consumed plus held in the current window.
    public var used: Credits
    /// When the current window ends.
    public var windowEnd: Instant

    public init(window: CapWindow, mode: CapMode, limit: Credits, used: Credits, windowEnd: Instant) {
        self.window = window
        self.mode = mode
        self.limit = limit
        self.used = used
        self.windowEnd = windowEnd
    }
}

extension Ledger {
    /// Caps per level besides the period's hard cap: a window and a mode each, so at most this many.
    static let windowCapsPerLevelMax = CapWindow.allCases.count * CapMode.allCases.count - 1

    // MARK: - Commands

    mutating func setCap(_ set: SetCap, at now: Instant) -> Answer {
        if let limit = set.limit, let error = validateCredits(limit, "cap", allowZero: true) { return refused(error) }
        if set.limit != nil, !(set.window == .period && set.mode == .hard) { rulesInUse.value = true }
        switch set.target {
        case .account:
            guard let slot = accountSlots[HashedString(set.account)] else { return refused(unknownAccount(set.account)) }
            if set.window == .period, set.mode == .hard {
                accounts[Int(slot)].capLimit = set.limit
            } else {
                let record = accounts[Int(slot)]
                update(&accounts[Int(slot)].windows, set, held: record.usage.held, period: record.period, at: now)
            }
        case .member(let member):
            switch memberSlot(set.account, member) {
            case .failure(let error): return refused(error)
            case .success(let slots):
                if set.window == .period, set.mode == .hard {
                    members[Int(slots.member)].capLimit = set.limit
                } else {
                    let held = members[Int(slots.member)].usage.held
                    update(&members[Int(slots.member)].windows, set, held: held, period: accounts[Int(slots.account)].period, at: now)
                }
            }
        case .group(let group):
            switch groupSlot(set.account, group) {
            case .failure(let error): return refused(error)
            case .success(let slots):
                if set.window == .period, set.mode == .hard {
                    groups[Int(slots.group)].capLimit = set.limit
                } else {
                    let held = groups[Int(slots.group)].usage.held
                    update(&groups[Int(slots.group)].windows, set, held: held, period: accounts[Int(slots.account)].period, at: now)
                }
            }
        }
        return .done
    }

    /// Adds, changes or removes the cap of `set`'s window and mode. A changed limit keeps the
    /// window's count; a new cap starts with what the level holds now.
    private func update(_ windows: inout [WindowCap], _ set: SetCap, held: Credits, period: BillingPeriod, at now: Instant) {
        let index = windows.firstIndex { $0.window == set.window && $0.mode == set.mode }
        switch (index, set.limit) {
        case (let index?, let limit?):
            windows[index].limit = limit
            windows[index].fired = windows[index].mode == .soft && windows[index].headroom(at: now) < 0
        case (let index?, nil):
            windows.remove(at: index)
        case (nil, let limit?):
            var usage = UsageCounter(windowEnd: set.window.bounds(containing: now, period: period).end)
            usage.held = held
            var cap = WindowCap(window: set.window, mode: set.mode, limit: limit, usage: usage)
            // A soft cap set below what is already used does not fire for it.
            cap.fired = set.mode == .soft && cap.headroom(at: now) < 0
            windows.append(cap)
            windows.sort { ($0.window.rawValue, $0.mode.rawValue) < ($1.window.rawValue, $1.mode.rawValue) }
        case (nil, nil):
            break
        }
    }

    mutating func setConcurrency(_ account: String, target: ConcurrencyTarget, limit: Int64?) -> Answer {
        if let limit, limit < 0 || limit > Int64(limits.holdsPerAccountMax) {
            return refused(LedgerError(.amountOutOfRange, level: .request, subject: "open holds limit must be 0 to \(limits.holdsPerAccountMax)"))
        }
        let bound = limit.map { Int($0) }
        if bound != nil { rulesInUse.value = true }
        switch target {
        case .account:
            guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
            accounts[Int(slot)].holdLimit = bound
        case .eachMember:
            guard let slot = accountSlots[HashedString(account)] else { return refused(unknownAccount(account)) }
            accounts[Int(slot)].memberHoldLimit = bound
        case .member(let member):
            switch memberSlot(account, member) {
            case .failure(let error): return refused(error)
            case .success(let slots): members[Int(slots.member)].holdLimit = bound
            }
        }
        return .done
    }

    // MARK: - The decision

    /// Why a reserve on `chain` may not open one more hold, or nil.
    @inline(__always)
    func concurrencyRefusal(_ chain: Chain) -> LedgerError? {
        guard rulesInUse.value else { return nil }
        let account = Int(chain.account)
        if let bound = accounts[account].holdLimit, accounts[account].openHolds >= bound {
            return LedgerError(.concurrencyLimit, level: .account, subject: accounts[account].id)
        }
        if chain.member != noSlot {
            let member = Int(chain.member)
            if let bound = members[member].holdLimit ?? accounts[account].memberHoldLimit, members[member].openHolds >= bound {
                return LedgerError(.concurrencyLimit, level: .member, subject: members[member].id)
            }
        }
        return nil
    }

    /// The smallest headroom of a level's hard window caps, or `current` if that is smaller.
    @inline(__always)
    static func tightest(_ windows: [WindowCap], _ current: Credits?, at now: Instant) -> Credits? {
        var result = current
        for cap in windows where cap.mode == .hard {
            let headroom = cap.headroom(at: now)
            if headroom < (result ?? .max) { result = headroom }
        }
        return result
    }

    /// The refusal's subject for a level that cannot take `cost`: its id, followed by
    /// " per WINDOW" when a window cap other than the billing period's is what refuses.
    func capSubject(_ id: String, capLimit: Credits?, usage: UsageCounter, windows: [WindowCap], cost: Credits, at now: Instant) -> String {
        if let limit = capLimit, limit - usage.used(at: now) < cost { return id }
        for cap in windows where cap.mode == .hard && cap.headroom(at: now) < cost {
            return "\(id) per \(cap.window.name)"
        }
        return id
    }

    /// Counts `held` and `consumed` in a level's window caps, firing its soft caps that are
    /// now past their limit. `owner` and `member` say whom an event is about.
    mutating func recordWindows(
        _ windows: inout [WindowCap], held: Credits, consumed: Credits, at now: Instant, period: BillingPeriod,
        level: LedgerError.Level, subject: String, owner: Int32, member: Int32
    ) {
        for index in windows.indices {
            windows[index].roll(to: now, period: period)
            windows[index].usage.add(held: held, consumed: consumed)
            guard windows[index].mode == .soft else { continue }
            let used = windows[index].usage.used(at: now)
            if used <= windows[index].limit {
                windows[index].fired = false
            } else if !windows[index].fired {
                windows[index].fired = true
                emit(
                    owner, member: member, at: now,
                    .softLimit(level: level, subject: subject, window: windows[index].window, limit: windows[index].limit, used: used))
            }
        }
    }

    /// The window caps of the chain's levels, counted with the period counters by `addUsage`.
    @inline(never)
    mutating func addWindowUsage(_ chain: Chain, held: Credits, consumed: Credits, at now: Instant) {
        let account = Int(chain.account)
        let period = accounts[account].period
        if chain.member != noSlot, !members[Int(chain.member)].windows.isEmpty {
            let member = Int(chain.member)
            var windows = members[member].windows
            members[member].windows = []
            recordWindows(&windows, held: held, consumed: consumed, at: now, period: period, level: .member, subject: members[member].id, owner: chain.account, member: chain.member)
            members[member].windows = windows
        }
        for group in chain.groups where !groups[Int(group)].windows.isEmpty {
            var windows = groups[Int(group)].windows
            groups[Int(group)].windows = []
            recordWindows(&windows, held: held, consumed: consumed, at: now, period: period, level: .group, subject: groups[Int(group)].id, owner: chain.account, member: noSlot)
            groups[Int(group)].windows = windows
        }
        if !accounts[account].windows.isEmpty {
            var windows = accounts[account].windows
            accounts[account].windows = []
            recordWindows(&windows, held: held, consumed: consumed, at: now, period: period, level: .account, subject: accounts[account].id, owner: chain.account, member: noSlot)
            accounts[account].windows = windows
        }
        if chain.parent != noSlot, !accounts[Int(chain.parent)].windows.isEmpty {
            let parent = Int(chain.parent)
            var windows = accounts[parent].windows
            accounts[parent].windows = []
            recordWindows(
                &windows, held: held, consumed: consumed, at: now, period: accounts[parent].period, level: .parent, subject: accounts[parent].id,
                owner: chain.parent, member: noSlot)
            accounts[parent].windows = windows
        }
    }

    /// Whether any level of the chain has window caps (then `addWindowUsage` has work).
    @inline(__always)
    func chainHasWindows(_ chain: Chain) -> Bool {
        guard rulesInUse.value else { return false }
        if !accounts[Int(chain.account)].windows.isEmpty { return true }
        if chain.parent != noSlot, !accounts[Int(chain.parent)].windows.isEmpty { return true }
        if chain.member != noSlot {
            if !members[Int(chain.member)].windows.isEmpty { return true }
            for group in chain.groups where !groups[Int(group)].windows.isEmpty { return true }
        }
        return false
    }

    /// Sets `rulesInUse` if any record has window caps or open-hold bounds (after a snapshot
    /// is read or a family moves in).
    mutating func noteLimitsInUse() {
        if hasLimits() { rulesInUse.value = true }
    }

    func hasLimits() -> Bool {
        accounts.contains(where: { !$0.windows.isEmpty || $0.holdLimit != nil || $0.memberHoldLimit != nil })
            || members.contains(where: { !$0.windows.isEmpty || $0.holdLimit != nil }) || groups.contains(where: { !$0.windows.isEmpty })
    }

    // MARK: - Reads

    /// A level's caps: the billing period's hard cap first (if set), then its window caps.
    func capViews(capLimit: Credits?, usage: UsageCounter, windows: [WindowCap], period: BillingPeriod, at now: Instant) -> [CapView] {
        func end(_ counter: UsageCounter, _ window: CapWindow) -> Instant {
            now < counter.windowEnd ? counter.windowEnd : window.bounds(containing: now, period: period).end
        }
        var views: [CapView] = []
        if let capLimit {
            views.append(CapView(window: .period, mode: .hard, limit: capLimit, used: usage.used(at: now), windowEnd: end(usage, .period)))
        }
        for cap in windows {
            views.append(CapView(window: cap.window, mode: cap.mode, limit: cap.limit, used: cap.usage.used(at: now), windowEnd: end(cap.usage, cap.window)))
        }
        return views
    }
}
