import Foundation
import NIOHTTP1
import TollgateLedger
import TollgateWire

/// The operator's read API on the admin port: JSON over HTTP GET, under `/api/v1/`.
///
/// | path | answer |
/// |---|---|
/// | `/api/v1/server` | accounts, members, open holds, ledger-wide burn, journal mode |
/// | `/api/v1/accounts?after=ID&limit=N` | accounts in creation order, a page at a time (`next`) |
/// | `/api/v1/accounts/ID` | the account at a glance, its alerts and auto-recharge |
/// | `/api/v1/accounts/ID/balance?member=M` | the balance: per-level usage and headroom, funds, grants, holds, burn |
/// | `/api/v1/accounts/ID/grants` | every live grant, including pending and spent ones still holding credits |
/// | `/api/v1/accounts/ID/members?limit=N` | the account's members: caps, consumed, held, own credits, open holds, groups |
/// | `/api/v1/accounts/ID/holds?limit=N` | the account's open holds |
/// | `/api/v1/products`, `/api/v1/plans` | the rate card, and the plan templates |
/// | `/api/v1/accounts/ID/consumption?member=M&limit=N` | recent consumption and the burn buckets |
/// | `/api/v1/accounts/ID/refusals?limit=N` | recent refusals, and counts by reason |
/// | `/api/v1/accounts/ID/overview?since=MS` | everything the dashboard shows, in one read |
///
/// A request presents a credential as `Authorization: Bearer TOKEN` (the tokens of the
/// credentials file, or the admin token); one with the `read` or `admin` role may read the
/// accounts its scope covers. Without a credential, the credentials file's `anonymous`
/// identity applies, if it has one. Errors are JSON too: `{"error": "...", "status": 404}`.
struct ReadAPI: Sendable {
    let service: LedgerService
    let access: AccessControl
    let history: BalanceHistory
    let events: EventHub
    let metrics: ServerMetrics
    let readiness: Readiness
    let startedAt: Instant

    struct Response: Sendable {
        var status: HTTPResponseStatus
        var body: Data
        var headers: [(String, String)] = []
    }

    static let pageLimit = 1_000
    static let recentLimit = 1_000

    func respond(method: HTTPMethod, path: String, query: [String: String], authorization: String?) -> Response {
        guard method == .GET || method == .HEAD else { return error(.methodNotAllowed, "the read API answers GET only") }
        if let problem = readiness.problem, problem.hasPrefix("starting") {
            // Until recovery is done the ledger is not the one the journal holds.
            return error(.serviceUnavailable, "not ready: \(problem)")
        }
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).dropFirst(2).map { Self.percentDecoded(String($0)) }
        do {
            let principal = try authenticate(authorization)
            switch parts.count {
            case 0: return ok(index())
            case 1 where parts[0] == "server": return ok(server())
            case 1 where parts[0] == "accounts": return try accounts(query, principal)
            case 1 where parts[0] == "products": return ok(products())
            case 1 where parts[0] == "plans": return ok(plans())
            case 2 where parts[0] == "accounts":
                return try account(parts[1], principal)
            case 3 where parts[0] == "accounts":
                let account = parts[1]
                guard principal.scope.contains(account) else { throw forbidden(principal, account) }
                switch parts[2] {
                case "balance": return try balance(account, query)
                case "grants": return try grants(account)
                case "members": return try members(account, query)
                case "holds": return try holds(account, query)
                case "consumption": return try consumption(account, query)
                case "refusals": return try refusals(account, query)
                case "overview": return try overview(account, query)
                default: break
                }
            default: break
            }
            return error(.notFound, "no such read: \(path); GET /api/v1 lists them")
        } catch let response as Failure {
            return response.response
        } catch {
            return self.error(.internalServerError, "\(error)")
        }
    }

    private struct Failure: Error {
        var response: Response
    }

    // MARK: - Credentials

    private func authenticate(_ authorization: String?) throws -> Principal {
        var digest: String?
        if let authorization {
            let parts = authorization.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "bearer" else {
                throw unauthorized("the Authorization header must be `Bearer TOKEN`")
            }
            digest = SHA256.hex(Array(parts[1].trimmingCharacters(in: .whitespaces).utf8))
        }
        switch access.resolve(certificate: nil, tokenDigest: digest).0 {
        case .refused(let why):
            throw unauthorized(authorization == nil ? "this server requires a credential: Authorization: Bearer TOKEN" : why)
        case .accepted(let principal):
            guard principal.role == .read || principal.role == .admin else {
                metrics.recordAccessRefusal(.forbidden, role: principal.role.description, reason: "role")
                throw Failure(response: error(.forbidden, "\(principal.name) has the \(principal.role) role; the read API needs a read or admin credential"))
            }
            return principal
        }
    }

    private func unauthorized(_ message: String) -> Failure {
        metrics.recordAccessRefusal(.unauthorized, role: "none", reason: "credential")
        var response = error(.unauthorized, message)
        response.headers.append(("WWW-Authenticate", "Bearer realm=\"tollgate\""))
        return Failure(response: response)
    }

    private func forbidden(_ principal: Principal, _ account: String) -> Failure {
        metrics.recordAccessRefusal(.forbidden, role: principal.role.description, reason: "scope")
        return Failure(response: error(.forbidden, "\(principal.name) may not read account \"\(account)\""))
    }

    // MARK: - Reads

    private func index() -> [String: Any] {
        [
            "reads": [
                "/api/v1/server", "/api/v1/accounts?after=ID&limit=N", "/api/v1/accounts/ID", "/api/v1/accounts/ID/balance?member=M",
                "/api/v1/accounts/ID/grants", "/api/v1/accounts/ID/consumption?member=M&limit=N", "/api/v1/accounts/ID/refusals?limit=N",
                "/api/v1/accounts/ID/overview?since=MILLISECONDS", "/api/v1/accounts/ID/members?limit=N", "/api/v1/accounts/ID/holds?limit=N",
                "/api/v1/products", "/api/v1/plans",
            ],
            "dashboard": "/dashboard",
        ]
    }

    private func server() -> [String: Any] {
        let counts = service.counts()
        return [
            "server": service.configuration.serverName, "at": service.now.description, "startedAt": startedAt.description,
            "accounts": counts.accounts, "members": counts.members, "openHolds": counts.openHolds,
            "burn": ["lastMinute": counts.burn.lastMinute, "lastHour": counts.burn.lastHour],
            "journalMode": service.configuration.journalMode.rawValue,
            "recentActivityKept": service.configuration.recentActivityKept,
            "watchedAccounts": history.watched(at: service.now).sorted(),
        ]
    }

    private func accounts(_ query: [String: String], _ principal: Principal) throws -> Response {
        let limit = try integer(query, "limit", default: 100, 1...Int64(Self.pageLimit))
        let after = query["after"].flatMap { $0.isEmpty ? nil : $0 }
        // An account out of scope is no cursor: its existence is not this reader's to learn.
        guard after.map(principal.scope.contains) ?? true, let (page, next) = service.accountSummaries(after: after, limit: Int(limit), scope: principal.scope) else {
            throw Failure(response: error(.badRequest, "after: there is no account \"\(after ?? "")\""))
        }
        return ok(["accounts": page.map(LedgerJSON.summary), "next": LedgerJSON.nullable(next)])
    }

    private func account(_ account: String, _ principal: Principal) throws -> Response {
        guard principal.scope.contains(account) else { throw forbidden(principal, account) }
        let summary = try summary(account)
        let watches = service.watches(of: account)
        return ok([
            "account": LedgerJSON.summary(summary),
            "alerts": watches.alerts.map { LedgerJSON.alert($0.rule, armed: $0.armed) },
            "autoRecharge": LedgerJSON.nullable(watches.recharge.map { LedgerJSON.recharge($0.rule, usedThisPeriod: $0.usedThisPeriod) }),
        ])
    }

    private func summary(_ account: String) throws -> AccountSummary {
        guard let summary = service.accountSummary(account) else {
            throw Failure(response: error(.notFound, "unknown account \"\(account)\""))
        }
        return summary
    }

    private func balance(_ account: String, _ query: [String: String]) throws -> Response {
        switch service.balance(account: account, member: query["member"]) {
        case .success(let balance): return ok(LedgerJSON.balance(balance))
        case .failure(let failure): throw Failure(response: error(.notFound, failure.description))
        }
    }

    /// The rate card: every product, its rate in force and the versions still to come.
    private func products() -> [String: Any] {
        let (products, metered) = service.onCopy { ledger, now in (ledger.products(at: now), ledger.meteredRateCard(at: now)) }
        func rate(_ rate: MeteredRate) -> [String: Any] { ["credits": rate.credits, "per": rate.per] }
        return [
            "products": products.map { product -> [String: Any] in
                [
                    "product": product.product, "creditsPerUnit": LedgerJSON.nullable(product.creditsPerUnit),
                    "upcoming": product.upcoming.map { ["effectiveAt": $0.effectiveAt.description, "creditsPerUnit": $0.creditsPerUnit] },
                ]
            },
            // Metered products' dimension rates (SET_METERED_RATE), by product and dimension.
            "metered": metered.map { view -> [String: Any] in
                [
                    "product": view.product, "dimension": view.dimension, "rate": view.rate.map(rate) as Any? ?? NSNull(),
                    "upcoming": view.upcoming.map { ["effectiveAt": $0.effectiveAt.description, "rate": rate($0.rate)] },
                ]
            },
        ]
    }

    /// The plan templates (DEFINE_PLAN): what PROVISION gives an account.
    private func plans() -> [String: Any] {
        let plans = service.onCopy { ledger, _ in ledger.planTemplates }
        return [
            "plans": plans.map { plan -> [String: Any] in
                [
                    "name": plan.name, "overage": LedgerJSON.overage(plan.overage),
                    "subscription": LedgerJSON.nullable(plan.subscription.map { terms -> [String: Any] in
                        [
                            "scope": terms.scope == .pooled ? "pooled" : "per-member", "creditsPerSeat": terms.creditsPerSeat, "prorate": terms.prorate,
                            "removal": terms.removal == .keep ? "keep" : "claw-back", "rolloverCap": terms.rolloverCap, "priority": terms.priority,
                        ]
                    }),
                    "grants": plan.grants.map { grant -> [String: Any] in
                        [
                            "amount": grant.amount, "priority": grant.priority, "source": LedgerJSON.grantSourceName(grant.source),
                            "lifetimeSeconds": LedgerJSON.nullable(grant.lifetimeMicroseconds.map { $0 / 1_000_000 }),
                        ]
                    },
                    "alerts": plan.alerts.map { alert -> [String: Any] in
                        var object = LedgerJSON.alert(alert, armed: true)
                        for key in ["armed", "firing", "member"] { object.removeValue(forKey: key) }
                        return object
                    },
                    "autoRecharge": LedgerJSON.nullable(plan.autoRecharge.map { rule -> [String: Any] in
                        var object = LedgerJSON.recharge(rule, usedThisPeriod: 0)
                        object.removeValue(forKey: "usedThisPeriod")
                        return object
                    }),
                ]
            }
        ]
    }

    /// The account's members: caps, what they consumed this period and hold, their own
    /// grants' credits, open holds and groups. Read on a copy of the ledger (a scan of every
    /// member), at most `limit` (1,000 by default, 100,000 at most).
    private func members(_ account: String, _ query: [String: String]) throws -> Response {
        let limit = try integer(query, "limit", default: 1_000, 1...100_000)
        guard let members = service.onCopy({ ledger, now in ledger.members(of: account, limit: Int(limit), at: now) }) else {
            throw Failure(response: error(.notFound, "unknown account \"\(account)\""))
        }
        return ok([
            "account": account,
            "members": members.map { member -> [String: Any] in
                [
                    "member": member.id, "cap": LedgerJSON.nullable(member.cap), "consumed": member.consumed, "held": member.held,
                    "available": member.available, "openHolds": member.openHolds, "groups": member.groups,
                    "openHoldsLimit": LedgerJSON.nullable(member.openHoldsLimit), "caps": member.caps.map(LedgerJSON.cap),
                ]
            },
        ])
    }

    /// The account's open holds by id, at most `limit` (1,000 by default, 100,000 at most).
    private func holds(_ account: String, _ query: [String: String]) throws -> Response {
        let limit = try integer(query, "limit", default: 1_000, 1...100_000)
        guard let holds = service.onCopy({ ledger, _ in ledger.openHolds(of: account, limit: Int(limit)) }) else {
            throw Failure(response: error(.notFound, "unknown account \"\(account)\""))
        }
        return ok([
            "account": account,
            "holds": holds.map { hold -> [String: Any] in
                [
                    "hold": hold.id, "member": LedgerJSON.nullable(hold.member), "product": hold.product, "quantity": hold.quantity,
                    "creditsPerUnit": hold.creditsPerUnit, "original": hold.original, "held": hold.held, "committed": hold.committed,
                    "createdAt": hold.createdAt.description, "deadline": hold.deadline.description,
                ]
            },
        ])
    }

    private func grants(_ account: String) throws -> Response {
        guard let grants = service.grants(of: account) else { throw Failure(response: error(.notFound, "unknown account \"\(account)\"")) }
        return ok(["account": account, "grants": grants.map(LedgerJSON.grant)])
    }

    private func consumption(_ account: String, _ query: [String: String]) throws -> Response {
        let limit = try integer(query, "limit", default: 50, 1...Int64(Self.recentLimit))
        let buckets = try burnBuckets(account, member: query["member"])
        var recent = service.activity(of: account, limit: Int(limit))
        if let member = query["member"] { recent.consumed = recent.consumed.filter { $0.member == member } }
        return ok([
            "account": account, "member": LedgerJSON.nullable(query["member"]),
            "burn": Self.burn(buckets),
            "recent": recent.consumed.map(Self.entry), "kept": recent.kept, "keptSince": LedgerJSON.nullable(recent.since?.description),
        ])
    }

    private func refusals(_ account: String, _ query: [String: String]) throws -> Response {
        let limit = try integer(query, "limit", default: 50, 1...Int64(Self.recentLimit))
        _ = try summary(account)
        let recent = service.activity(of: account, limit: Int(limit))
        return ok([
            "account": account, "byReason": recent.byReason, "recent": recent.refused.map(Self.entry), "kept": recent.kept,
            "keptSince": LedgerJSON.nullable(recent.since?.description),
        ])
    }

    /// Everything the dashboard shows for an account. `since` (milliseconds) asks only for the
    /// balance samples taken after it; the first read starts watching the account.
    private func overview(_ account: String, _ query: [String: String]) throws -> Response {
        let since = try query["since"].map { _ in try integer(query, "since", default: 0, 0...Int64.max / 1_000) }
        let summary = try summary(account)
        let alreadyWatched = history.watch(account, at: summary.at)
        if !alreadyWatched { history.append(BalanceHistory.Sample(summary), to: account) }
        let accountBalance: Balance
        switch service.balance(account: account, member: nil) {
        case .success(let balance): accountBalance = balance
        case .failure(let failure): throw Failure(response: error(.notFound, failure.description))
        }
        let buckets = try burnBuckets(account, member: nil)
        let recent = service.activity(of: account, limit: 20)
        let watches = service.watches(of: account)
        // Samples in a later millisecond than `since` (the page asks with its newest sample's).
        let samples = history.samples(of: account, after: since.map { Instant(microsecondsSinceEpoch: $0 * 1_000 + 999) })
        // The members seen in recent activity (consumption and refusals), with their own level:
        // most refusals are a member's cap, which the account's levels do not show. Bounded by
        // what the activity log keeps for the page (20 of each), one balance read each.
        var seen: [String] = []
        for entry in recent.refused + recent.consumed {
            if let member = entry.member, !seen.contains(member), seen.count < 20 { seen.append(member) }
        }
        var members: [[String: Any]] = []
        for member in seen {
            guard case .success(let balance) = service.balance(account: account, member: member),
                let level = balance.levels.first(where: { $0.level == .member })
            else { continue }
            let funds = balance.funds.member + balance.funds.pool + balance.funds.parentPool
            members.append([
                "member": member, "limit": LedgerJSON.nullable(level.limit), "consumed": level.consumed, "held": level.held,
                "headroom": LedgerJSON.nullable(level.headroom), "funds": funds, "openHolds": balance.openHolds,
                "caps": level.caps.map(LedgerJSON.cap), "openHoldsLimit": LedgerJSON.nullable(balance.openHoldsLimit),
                "canSpend": min(balance.headroom.member ?? Int64.max, balance.headroom.group ?? Int64.max, balance.headroom.account ?? Int64.max,
                                balance.headroom.parent ?? Int64.max, balance.headroom.funds),
            ])
        }
        var words: [String: String] = [:]
        for code in LedgerError.Code.allCases { words[code.identifier] = code.name }
        return ok([
            "account": LedgerJSON.summary(summary),
            "levels": accountBalance.levels.map(LedgerJSON.level),
            "headroom": LedgerJSON.headroom(accountBalance.headroom),
            "grants": accountBalance.grants.map(LedgerJSON.grant),
            "depletion": Self.depletion(summary),
            "history": [
                "intervalMilliseconds": history.settings.intervalMilliseconds, "kept": history.settings.samplesKept,
                "columns": ["atMilliseconds", "balance", "held", "consumed", "allotment"],
                "samples": samples.map { [LedgerJSON.milliseconds($0.at), $0.balance, $0.held, $0.consumed, $0.allotment] },
            ],
            "burn": Self.burn(buckets),
            "consumption": recent.consumed.map(Self.entry),
            "refusals": ["byReason": recent.byReason, "recent": recent.refused.prefix(10).map(Self.entry), "kept": recent.kept, "words": words],
            "members": members,
            "alerts": watches.alerts.map { LedgerJSON.alert($0.rule, armed: $0.armed) },
            "autoRecharge": LedgerJSON.nullable(watches.recharge.map { LedgerJSON.recharge($0.rule, usedThisPeriod: $0.usedThisPeriod) }),
            "events": events.recent(account: account, limit: 10).map(EventJSON.object),
        ])
    }

    private func burnBuckets(_ account: String, member: String?) throws -> BurnBuckets {
        switch service.burnBuckets(account: account, member: member) {
        case .success(let buckets): return buckets
        case .failure(let failure): throw Failure(response: error(.notFound, failure.description))
        }
    }

    // MARK: - Shapes

    static func burn(_ buckets: BurnBuckets) -> [String: Any] {
        func pairs(_ list: [BurnBuckets.Bucket]) -> [[Int64]] { list.map { [LedgerJSON.milliseconds($0.start), $0.credits] } }
        return [
            "lastMinute": buckets.lastMinute.reduce(0) { $0 + $1.credits }, "lastHour": buckets.lastHour.reduce(0) { $0 + $1.credits },
            "bucketColumns": ["startMilliseconds", "credits"],
            "minuteBuckets": pairs(buckets.lastMinute), "hourBuckets": pairs(buckets.lastHour),
        ]
    }

    /// When the balance reaches zero at the current burn rate: the last minute's, or the last
    /// hour's when nothing was consumed in the last minute. Integer arithmetic throughout.
    static func depletion(_ summary: AccountSummary) -> [String: Any] {
        let balance = summary.balance
        if balance <= 0 {
            return ["state": "depleted", "balance": balance, "seconds": 0, "at": summary.at.description, "atMilliseconds": LedgerJSON.milliseconds(summary.at)]
        }
        let (credits, window, basis): (Int64, Int64, String) =
            summary.burn.lastMinute > 0 ? (summary.burn.lastMinute, 60, "lastMinute") : (summary.burn.lastHour, 3_600, "lastHour")
        guard credits > 0 else { return ["state": "notBurning", "balance": balance, "seconds": NSNull(), "at": NSNull(), "atMilliseconds": NSNull()] }
        let (product, overflow) = balance.multipliedReportingOverflow(by: window)
        let seconds = overflow ? Int64.max / Microseconds.perSecond : min(product / credits, Int64.max / Microseconds.perSecond)
        let at = summary.at.adding(microseconds: seconds * Microseconds.perSecond)
        return [
            "state": "projected", "basis": basis, "creditsPerMinute": basis == "lastMinute" ? credits : credits / 60, "balance": balance,
            "seconds": seconds, "at": at.description, "atMilliseconds": LedgerJSON.milliseconds(at),
        ]
    }

    static func entry(_ entry: ActivityLog.Entry) -> [String: Any] {
        var object: [String: Any] = [
            "at": entry.at.description, "atMilliseconds": LedgerJSON.milliseconds(entry.at), "operation": entry.operation.name.lowercased(),
            "member": LedgerJSON.nullable(entry.member), "product": LedgerJSON.nullable(entry.product), "hold": LedgerJSON.nullable(entry.hold),
        ]
        switch entry.kind {
        case .consumed:
            object["credits"] = entry.amount
        case .refused:
            object["quantity"] = entry.amount
            if let refusal = entry.refusal {
                object["reason"] = refusal.code.identifier
                object["level"] = refusal.level.name
                object["subject"] = refusal.subject
            }
        }
        return object
    }

    // MARK: - Plumbing

    private func integer(_ query: [String: String], _ name: String, default value: Int64, _ range: ClosedRange<Int64>) throws -> Int64 {
        guard let text = query[name] else { return value }
        guard let number = Int64(text), range.contains(number) else {
            throw Failure(response: error(.badRequest, "\(name) must be a whole number from \(range.lowerBound) to \(range.upperBound), not \"\(text)\""))
        }
        return number
    }

    private func ok(_ object: [String: Any]) -> Response {
        Response(status: .ok, body: LedgerJSON.data(object))
    }

    private func error(_ status: HTTPResponseStatus, _ message: String) -> Response {
        Self.failure(status, message)
    }

    static func failure(_ status: HTTPResponseStatus, _ message: String) -> Response {
        Response(status: status, body: LedgerJSON.data(["error": message, "status": Int(status.code)]))
    }

    /// `%41` → `A`; `+` stays (this is a path, not a form). Malformed escapes are kept as typed.
    static func percentDecoded(_ text: String) -> String {
        guard text.contains("%") else { return text }
        var bytes: [UInt8] = []
        var utf8 = Array(text.utf8)[...]
        while let byte = utf8.popFirst() {
            if byte == UInt8(ascii: "%"), utf8.count >= 2, let value = UInt8(String(decoding: utf8.prefix(2), as: UTF8.self), radix: 16) {
                bytes.append(value)
                utf8 = utf8.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// `a=1&b=x%20y` → ["a": "1", "b": "x y"]; `+` is a space here, as forms send it.
    static func query(_ text: Substring) -> [String: String] {
        var result: [String: String] = [:]
        for pair in text.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            let name = percentDecoded(String(parts[0]).replacingOccurrences(of: "+", with: " "))
            let value = parts.count > 1 ? percentDecoded(String(parts[1]).replacingOccurrences(of: "+", with: " ")) : ""
            result[name] = value
        }
        return result
    }
}
