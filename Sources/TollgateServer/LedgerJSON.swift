import Foundation
import TollgateLedger

/// The ledger's values as JSON objects: what `tollgate --json` prints, what the read API
/// answers and what the event log holds, one spelling for all, and one writer (`data`).
public enum LedgerJSON {
    /// Compact JSON with sorted keys. Written here rather than by `JSONSerialization`, which on
    /// Linux took 255 ms for a page of 1,000 accounts (bench/README.md, "What the read API
    /// costs the gate"); this takes a few. Knows the values these objects hold: strings,
    /// integers, booleans, null (`NSNull`), arrays and string-keyed dictionaries of them.
    public static func data(_ object: Any) -> Data {
        var out: [UInt8] = []
        out.reserveCapacity(1_024)
        write(object, into: &out)
        return Data(out)
    }

    static func write(_ value: Any, into out: inout [UInt8]) {
        switch value {
        case let text as String: writeString(text, into: &out)
        case let number as Int64: out += Array(String(number).utf8)
        case let number as Int: out += Array(String(number).utf8)
        case let number as UInt64: out += Array(String(number).utf8)
        case let number as Int32: out += Array(String(number).utf8)
        case let flag as Bool: out += Array((flag ? "true" : "false").utf8)
        case is NSNull: out += Array("null".utf8)
        case let object as [String: Any]:
            out.append(UInt8(ascii: "{"))
            for (index, key) in object.keys.sorted().enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                writeString(key, into: &out)
                out.append(UInt8(ascii: ":"))
                write(object[key]!, into: &out)
            }
            out.append(UInt8(ascii: "}"))
        case let list as [Any]:
            out.append(UInt8(ascii: "["))
            for (index, element) in list.enumerated() {
                if index > 0 { out.append(UInt8(ascii: ",")) }
                write(element, into: &out)
            }
            out.append(UInt8(ascii: "]"))
        default:
            // An optional not made NSNull: its value, or null; anything else, as text.
            let mirror = Mirror(reflecting: value)
            if mirror.displayStyle == .optional {
                if let wrapped = mirror.children.first?.value { write(wrapped, into: &out) } else { out += Array("null".utf8) }
            } else {
                writeString("\(value)", into: &out)
            }
        }
    }

    static func writeString(_ text: String, into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
            case UInt8(ascii: "\\"): out += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
            case UInt8(ascii: "\n"): out += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
            case UInt8(ascii: "\r"): out += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
            case UInt8(ascii: "\t"): out += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                out += [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// An optional as JSON: the value, or null.
    public static func nullable(_ value: Any?) -> Any {
        value ?? NSNull()
    }

    /// Milliseconds since the epoch, which a browser's `Date` takes as is.
    public static func milliseconds(_ instant: Instant) -> Int64 {
        instant.microsecondsSinceEpoch / 1_000
    }

    public static func headroom(_ headroom: Headroom) -> [String: Any] {
        var object: [String: Any] = ["funds": headroom.funds]
        if let member = headroom.member { object["member"] = member }
        if let group = headroom.group {
            object["group"] = group
            object["groupId"] = headroom.groupID ?? ""
        }
        if let account = headroom.account { object["account"] = account }
        if let parent = headroom.parent { object["parent"] = parent }
        return object
    }

    public static func grantSourceName(_ source: GrantSource) -> String {
        switch source {
        case .recurring: "recurring"
        case .topUp: "top-up"
        case .promotional: "promotional"
        case .manual: "manual"
        case .rollover: "rollover"
        }
    }

    public static func grant(_ grant: GrantView) -> [String: Any] {
        var scope = "pool"
        if case .member(let member) = grant.scope { scope = "member:\(member)" }
        let state: String =
            switch grant.state {
            case .pending: "pending"
            case .active: "active"
            case .expired: "expired"
            case .voided: "voided"
            }
        return [
            "id": grant.id, "account": grant.account, "scope": scope, "amount": grant.amount, "available": grant.available,
            "held": grant.held, "consumed": grant.consumed, "expired": grant.expired, "voided": grant.voided,
            "priority": grant.priority, "effectiveAt": grant.effectiveAt.description, "expiresAt": grant.expiresAt.description,
            "source": grantSourceName(grant.source), "state": state, "products": grant.products,
        ]
    }

    public static func overage(_ policy: OveragePolicy) -> [String: Any] {
        switch policy {
        case .deny: ["policy": "deny"]
        case .overdraft(let limit): ["policy": "overdraft", "limit": limit]
        case .finish(let percent): ["policy": "finish", "percent": percent]
        }
    }

    public static func subscription(_ view: SubscriptionView?) -> Any {
        guard let view else { return NSNull() }
        let terms = view.terms
        return [
            "scope": terms.scope == .pooled ? "pooled" : "perMember", "creditsPerSeat": terms.creditsPerSeat, "seats": view.seats,
            "prorate": terms.prorate, "removal": terms.removal == .keep ? "keep" : "clawBack", "rolloverCap": terms.rolloverCap,
            "priority": terms.priority, "periodStart": view.periodStart.description, "periodEnd": view.periodEnd.description,
            "endsAtPeriodEnd": view.nextTerms == .some(nil),
            "pendingSeats": view.pendingSeats.map { ["at": $0.at.description, "seats": $0.seats] as [String: Any] } as Any? ?? NSNull(),
        ] as [String: Any]
    }

    public static func level(_ level: LevelUsage) -> [String: Any] {
        [
            "level": level.level.name, "subject": level.subject, "limit": nullable(level.limit), "consumed": level.consumed, "held": level.held,
            "headroom": nullable(level.headroom), "caps": level.caps.map(cap),
        ]
    }

    /// A cap over a window: `{"window": "hour", "mode": "hard", "limit": 500, "used": 120, "windowEnd": "..."}`.
    public static func cap(_ cap: CapView) -> [String: Any] {
        ["window": cap.window.name, "mode": cap.mode.name, "limit": cap.limit, "used": cap.used, "windowEnd": cap.windowEnd.description]
    }

    public static func balance(_ balance: Balance) -> [String: Any] {
        let funds = balance.funds
        return [
            "account": balance.account, "member": nullable(balance.member), "at": balance.at.description,
            "periodStart": balance.periodStart.description, "periodEnd": balance.periodEnd.description,
            "headroom": headroom(balance.headroom),
            "funds": [
                "member": funds.member, "pool": funds.pool, "parentPool": funds.parentPool, "overdrawn": funds.overdrawn,
                "overdraftHeld": funds.overdraftHeld, "balance": funds.balance,
            ],
            "levels": balance.levels.map(level),
            "grants": balance.grants.map(grant),
            "openHolds": balance.openHolds,
            "openHoldsLimit": nullable(balance.openHoldsLimit),
            "subscription": subscription(balance.subscription),
            "burn": ["lastMinute": balance.burn.lastMinute, "lastHour": balance.burn.lastHour],
        ]
    }

    public static func summary(_ summary: AccountSummary) -> [String: Any] {
        [
            "account": summary.account, "parent": nullable(summary.parent), "children": summary.children, "members": summary.members,
            "balance": summary.balance, "pool": summary.pool, "membersOwn": summary.membersOwn, "held": summary.held,
            "consumed": summary.consumed, "cap": nullable(summary.cap), "overdrawn": summary.overdrawn, "overdraftHeld": summary.overdraftHeld,
            "overage": overage(summary.overage), "allotment": summary.allotment, "openHolds": summary.openHolds, "liveGrants": summary.liveGrants,
            "openHoldsLimit": nullable(summary.openHoldsLimit), "memberOpenHoldsLimit": nullable(summary.memberOpenHoldsLimit), "caps": summary.caps.map(cap),
            "burn": ["lastMinute": summary.burn.lastMinute, "lastHour": summary.burn.lastHour],
            "periodStart": summary.periodStart.description, "periodEnd": summary.periodEnd.description, "at": summary.at.description,
            "atMilliseconds": milliseconds(summary.at),
        ]
    }

    public static func alert(_ rule: AlertRule, armed: Bool) -> [String: Any] {
        let threshold: [String: Any] =
            switch rule.threshold {
            case .credits(let credits): ["kind": "credits", "credits": credits]
            case .percentOfAllotment(let percent): ["kind": "percentOfAllotment", "percent": percent]
            case .depleted: ["kind": "depleted"]
            }
        return ["id": rule.id, "member": nullable(rule.member), "threshold": threshold, "armed": armed, "firing": !armed]
    }

    public static func recharge(_ rule: AutoRecharge, usedThisPeriod: Int64) -> [String: Any] {
        [
            "below": rule.below, "amount": rule.amount, "upTo": nullable(rule.upTo), "maxPerPeriod": rule.maxPerPeriod,
            "usedThisPeriod": usedThisPeriod, "priority": rule.priority,
        ]
    }
}

