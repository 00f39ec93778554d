import ArgumentParser
import Foundation
import TollgateClient
import TollgateLedger
import TollgateWire
import Yams

/// `tollgate apply FILE`: sets up products, rates, accounts, members, groups, caps, policies
/// and grants from one YAML or JSON file. See examples/team-plan.yaml.
///
/// Applying a file again changes nothing that is already so: accounts, members and groups
/// that exist are left alone, and every step is sent under an idempotency key derived from
/// what the step says (a grant's account, amount, scope, priority, expiry and source), so a
/// grant already applied is recognised and not granted twice — for as long as the server
/// remembers keys (24 hours by default). Editing one grant in the file adds that grant only.
struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply a plan file (YAML or JSON) of products, accounts, members, groups and grants.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The plan file.") var file: String

    func run() async throws {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ValidationError("cannot read \(file)") }
        let plan: Plan
        do {
            plan = try Plan(yaml: text)
        } catch let error as PlanError {
            throw ValidationError("\(file): \(error.message)")
        }
        let client = try await options.connect()
        var report: [[String: Any]] = []
        var lines: [String] = []
        var refused = 0
        var seen: [String: Int] = [:]
        var progress = TerminalProgress(unit: "steps")
        func step(_ label: String, _ command: Command, tolerating: Set<LedgerError.Code> = []) async throws -> Answer? {
            // The key names the step, and how many identical steps came before it in the file.
            seen[label, default: 0] += 1
            progress.advance()
            let key = "apply-" + String(stableHash("\(label)#\(seen[label]!)"), radix: 16)
            do {
                let answer = try await client.apply(command, key: key)
                lines.append("ok       \(label)")
                report.append(["step": label, "outcome": "ok"])
                return answer
            } catch {
                if case .refused(let refusal) = error, tolerating.contains(refusal.error.code) {
                    lines.append("exists   \(label)")
                    report.append(["step": label, "outcome": "exists"])
                    return nil
                }
                if case .refused(let refusal) = error, refusal.error.code == .idempotencyConflict {
                    // The same step was applied before, at another time: nothing to do.
                    lines.append("applied  \(label) (by an earlier apply)")
                    report.append(["step": label, "outcome": "appliedBefore"])
                    return nil
                }
                if case .refused(let refusal) = error {
                    refused += 1
                    lines.append("REFUSED  \(label): \(refusal.error)")
                    report.append(["step": label, "outcome": "refused", "reason": refusal.error.code.identifier, "subject": refusal.error.subject])
                    return nil
                }
                await client.close()
                throw CLIError.failed("\(label): \(error)")
            }
        }
        let now = Instant(microsecondsSinceEpoch: Int64(Date().timeIntervalSince1970 * 1_000_000))
        for (product, rate) in plan.products {
            _ = try await step("rate \(product) = \(rate)", .setRate(product: product, creditsPerUnit: rate, effectiveAt: now))
        }
        for template in plan.templates {
            _ = try await step("plan \(template.name)", .definePlan(template))
        }
        for account in plan.accounts {
            if let template = account.plan {
                _ = try await step(
                    "account \(account.id) on plan \(template)",
                    .provision(
                        Provision(account: account.id, plan: template, parent: account.parent, seats: account.seats ?? 0, members: account.members.map(\.id))),
                    tolerating: [.alreadyExists])
            } else {
                _ = try await step(
                    "account \(account.id)", .createAccount(CreateAccount(account: account.id, parent: account.parent, overage: account.overage)),
                    tolerating: [.alreadyExists])
                _ = try await step("overage \(account.id)", .setOverage(account: account.id, policy: account.overage))
            }
            if let cap = account.cap { _ = try await step("cap \(account.id) = \(cap)", .setAccountCap(account: account.id, limit: cap)) }
            for (product, rate) in account.rates {
                _ = try await step("rate \(product) = \(rate.map(String.init) ?? "the rate card") for \(account.id)", .setAccountRate(account: account.id, product: product, creditsPerUnit: rate, effectiveAt: now))
            }
            for member in account.members {
                _ = try await step("member \(account.id)/\(member.id)", .addMember(account: account.id, member: member.id), tolerating: [.alreadyExists])
                if let cap = member.cap {
                    _ = try await step("cap \(account.id)/\(member.id) = \(cap)", .setMemberCap(account: account.id, member: member.id, limit: cap))
                }
            }
            for group in account.groups {
                _ = try await step("group \(account.id)/\(group.id)", .createGroup(account: account.id, group: group.id), tolerating: [.alreadyExists])
                if let cap = group.cap {
                    _ = try await step("cap group \(account.id)/\(group.id) = \(cap)", .setGroupCap(account: account.id, group: group.id, limit: cap))
                }
                for member in group.members {
                    _ = try await step(
                        "group \(account.id)/\(group.id) + \(member)", .addToGroup(account: account.id, group: group.id, member: member),
                        tolerating: [.alreadyExists])
                }
            }
            if let terms = account.subscription {
                if let seats = account.seats {
                    _ = try await step("seats \(account.id) = \(seats)", .setSeats(account: account.id, seats: seats, effectiveAt: now))
                }
                let scope = terms.scope == .pooled ? "pooled" : "per member"
                _ = try await step(
                    "subscription \(account.id): \(terms.creditsPerSeat) credits per seat, \(scope)", .setSubscription(account: account.id, terms: terms))
            }
            var periodEnd: Instant?
            for grant in account.grants {
                var expiresAt = Instant.distantFuture
                switch grant.expires {
                case .never: break
                case .at(let instant): expiresAt = instant
                case .after(let microseconds): expiresAt = now.adding(microseconds: microseconds)
                case .periodEnd:
                    if periodEnd == nil {
                        do {
                            periodEnd = try await client.balance(account: account.id).periodEnd
                        } catch {
                            await client.close()
                            throw CLIError.failed("cannot read \(account.id)'s period: \(error)")
                        }
                    }
                    expiresAt = periodEnd!
                }
                let scope: GrantScope = grant.member.map { .member($0) } ?? .pool
                let label = "grant \(grant.amount) to \(account.id)\(grant.member.map { "/\($0)" } ?? "") at priority \(grant.priority), \(grant.source), expires \(grant.expiresText)"
                let answer = try await step(
                    label,
                    .addGrant(AddGrant(account: account.id, scope: scope, amount: grant.amount, priority: grant.priority, effectiveAt: now, expiresAt: expiresAt, source: grant.source)))
                if case .grantAdded(let id) = answer { lines[lines.count - 1] += " (grant \(id))" }
            }
        }
        await client.close()
        progress.finish()
        print(options.json ? Output.json(["file": file, "steps": report, "refused": refused]) : lines.joined(separator: "\n"))
        if refused > 0 { throw ExitCode(3) }
    }

    /// FNV-1a over the file, so the same file always yields the same keys.
    func stableHash(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return hash
    }
}

struct PlanError: Error {
    var message: String
}

/// A plan file, read into values.
struct Plan {
    struct Member {
        var id: String
        var cap: Credits?
    }

    struct Group {
        var id: String
        var cap: Credits?
        var members: [String]
    }

    enum Expiry {
        case never
        case periodEnd
        case at(Instant)
        case after(Int64)
    }

    struct Grant {
        var amount: Credits
        var priority: Int32
        var member: String?
        var expires: Expiry
        var expiresText: String
        var source: GrantSource
    }

    struct Account {
        var id: String
        var parent: String?
        var overage: OveragePolicy
        var cap: Credits?
        var members: [Member]
        var groups: [Group]
        var grants: [Grant]
        var rates: [(String, Credits?)]
        var subscription: Subscription?
        var seats: Int64?
        /// Provision from this plan template (one step, all or nothing).
        var plan: String?
    }

    var products: [(String, Credits)] = []
    var templates: [TollgateLedger.Plan] = []
    var accounts: [Account] = []

    init(yaml: String) throws {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw PlanError(message: "not valid YAML or JSON: \(error)")
        }
        guard let mapping = root?.mapping else { throw PlanError(message: "the top level must be a mapping with products and accounts") }
        for (key, value) in mapping {
            switch key.string {
            case "products":
                guard let products = value.mapping else { throw PlanError(message: "products must map product ids to credits per unit") }
                for (product, rate) in products {
                    guard let name = product.string, let credits = rate.int else { throw PlanError(message: "products: each rate must be a whole number of credits") }
                    self.products.append((name, Int64(credits)))
                }
            case "accounts":
                guard let accounts = value.sequence else { throw PlanError(message: "accounts must be a list") }
                self.accounts = try accounts.map(Plan.account)
            case "plans":
                guard let plans = value.mapping else { throw PlanError(message: "plans must map plan names to templates") }
                for (name, template) in plans {
                    guard let name = name.string else { throw PlanError(message: "plans: each plan needs a name") }
                    templates.append(try Plan.template(name, template))
                }
            default:
                throw PlanError(message: "unknown top-level key \"\(key.string ?? "?")\"; expected products, plans and accounts")
            }
        }
    }

    static func account(_ node: Node) throws -> Account {
        guard let mapping = node.mapping, let id = mapping["id"]?.string else { throw PlanError(message: "each account needs an id") }
        var account = Account(
            id: id, parent: mapping["parent"]?.string, overage: .deny, cap: nil, members: [], groups: [], grants: [], rates: [], subscription: nil,
            seats: nil, plan: nil)
        for (key, value) in mapping {
            switch key.string ?? "" {
            case "id", "parent": break
            case "overage":
                do { account.overage = try parseOverage(value.string ?? "") } catch { throw PlanError(message: "account \(id): \(error)") }
            case "cap": account.cap = try credits(value, "account \(id) cap")
            case "members":
                account.members = try (value.sequence ?? []).map { member in
                    if let name = member.string { return Member(id: name, cap: nil) }
                    guard let name = member.mapping?["id"]?.string else { throw PlanError(message: "account \(id): each member is an id or {id, cap}") }
                    return Member(id: name, cap: try member.mapping?["cap"].map { try credits($0, "member \(name) cap") })
                }
            case "groups":
                account.groups = try (value.sequence ?? []).map { group in
                    guard let mapping = group.mapping, let name = mapping["id"]?.string else { throw PlanError(message: "account \(id): each group needs an id") }
                    return Group(id: name, cap: try mapping["cap"].map { try credits($0, "group \(name) cap") }, members: (mapping["members"]?.sequence ?? []).compactMap(\.string))
                }
            case "grants":
                account.grants = try (value.sequence ?? []).map { try grant($0, account: id) }
            case "subscription":
                (account.subscription, account.seats) = try subscription(value, account: id)
            case "plan": account.plan = value.string
            case "seats": account.seats = try credits(value, "account \(id) seats")
            case "rates":
                for (product, rate) in value.mapping ?? [:] {
                    guard let name = product.string else { continue }
                    account.rates.append((name, rate.string == "none" ? nil : try credits(rate, "rate \(name)")))
                }
            default:
                throw PlanError(message: "account \(id): unknown key \"\(key.string ?? "?")\"")
            }
        }
        return account
    }

    /// `subscription: {credits-per-seat, scope: pooled | per-member, seats, prorate, removal:
    /// keep | claw-back, rollover-cap, priority}`.
    static func subscription(_ node: Node, account: String, seatsRequired: Bool = true) throws -> (Subscription, Int64?) {
        guard let mapping = node.mapping else { throw PlanError(message: "account \(account): subscription must be a mapping") }
        let known: Set<String> = ["credits-per-seat", "scope", "seats", "prorate", "removal", "rollover-cap", "priority"]
        for key in mapping.keys where !known.contains(key.string ?? "") {
            throw PlanError(message: "account \(account): unknown subscription key \"\(key.string ?? "?")\"; known: \(known.sorted().joined(separator: ", "))")
        }
        guard let perSeat = mapping["credits-per-seat"] else { throw PlanError(message: "account \(account): a subscription needs credits-per-seat") }
        var terms = Subscription(creditsPerSeat: try credits(perSeat, "account \(account) credits-per-seat"))
        switch mapping["scope"]?.string ?? "pooled" {
        case "pooled": terms.scope = .pooled
        case "per-member": terms.scope = .perMember
        case let other: throw PlanError(message: "account \(account): subscription scope must be pooled or per-member, not \"\(other)\"")
        }
        if let prorate = mapping["prorate"] {
            guard let value = prorate.bool else { throw PlanError(message: "account \(account): prorate must be true or false") }
            terms.prorate = value
        }
        switch mapping["removal"]?.string ?? "keep" {
        case "keep": terms.removal = .keep
        case "claw-back": terms.removal = .clawBack
        case let other: throw PlanError(message: "account \(account): removal must be keep or claw-back, not \"\(other)\"")
        }
        if let cap = mapping["rollover-cap"] { terms.rolloverCap = try credits(cap, "account \(account) rollover-cap") }
        if let priority = mapping["priority"] {
            guard let value = priority.int, let narrow = Int32(exactly: value) else { throw PlanError(message: "account \(account): priority must be a whole number") }
            terms.priority = narrow
        }
        let seats = try mapping["seats"].map { try credits($0, "account \(account) seats") }
        if terms.scope == .perMember && seats != nil {
            throw PlanError(message: "account \(account): a per-member subscription's seats are its members; drop seats")
        }
        if seatsRequired && terms.scope == .pooled && seats == nil {
            throw PlanError(message: "account \(account): a pooled subscription needs seats")
        }
        return (terms, seats)
    }

    /// A plan template: `{overage, subscription: {...}, grants: [{amount, priority, source,
    /// expires: never | DURATION}], alerts: [{id, credits | percent | depleted: true}],
    /// recharge: {below, amount, up-to, max-per-period, priority, expires-after}}`.
    static func template(_ name: String, _ node: Node) throws -> TollgateLedger.Plan {
        guard let mapping = node.mapping else { throw PlanError(message: "plan \(name) must be a mapping") }
        var plan = TollgateLedger.Plan(name: name)
        for (key, value) in mapping {
            switch key.string ?? "" {
            case "overage":
                do { plan.overage = try parseOverage(value.string ?? "") } catch { throw PlanError(message: "plan \(name): \(error)") }
            case "subscription":
                let (terms, seats) = try subscription(value, account: "plan \(name)", seatsRequired: false)
                guard seats == nil else { throw PlanError(message: "plan \(name): seats are given when an account is provisioned, not in the plan") }
                plan.subscription = terms
            case "grants":
                plan.grants = try (value.sequence ?? []).map { node in
                    let grant = try Plan.grant(node, account: "plan \(name)")
                    let lifetime: Int64?
                    switch grant.expires {
                    case .never: lifetime = nil
                    case .after(let microseconds): lifetime = microseconds
                    default: throw PlanError(message: "plan \(name): a plan's grant expires never or after a duration")
                    }
                    return PlanGrant(amount: grant.amount, priority: grant.priority, source: grant.source, lifetimeMicroseconds: lifetime)
                }
            case "alerts":
                plan.alerts = try (value.sequence ?? []).map { node in
                    guard let alert = node.mapping, let id = alert["id"]?.string else { throw PlanError(message: "plan \(name): each alert needs an id") }
                    if let credits = alert["credits"] { return AlertRule(id: id, threshold: .credits(try Plan.credits(credits, "alert \(id) credits"))) }
                    if let percent = alert["percent"] { return AlertRule(id: id, threshold: .percentOfAllotment(try Plan.credits(percent, "alert \(id) percent"))) }
                    if alert["depleted"]?.bool == true { return AlertRule(id: id, threshold: .depleted) }
                    throw PlanError(message: "plan \(name): alert \(id) needs credits, percent or depleted: true")
                }
            case "recharge":
                guard let recharge = value.mapping, let below = recharge["below"], let amount = recharge["amount"] else {
                    throw PlanError(message: "plan \(name): recharge needs below and amount")
                }
                var rule = AutoRecharge(
                    below: try credits(below, "recharge below"), amount: try credits(amount, "recharge amount"),
                    maxPerPeriod: try recharge["max-per-period"].map { try credits($0, "max-per-period") } ?? 1)
                rule.upTo = try recharge["up-to"].map { try credits($0, "up-to") }
                if let priority = recharge["priority"]?.int { rule.priority = Int32(clamping: priority) }
                if let lifetime = recharge["expires-after"]?.string { rule.expiresAfterMicroseconds = try TimeParser.duration(lifetime) }
                plan.autoRecharge = rule
            default:
                throw PlanError(message: "plan \(name): unknown key \"\(key.string ?? "?")\"")
            }
        }
        return plan
    }

    static func grant(_ node: Node, account: String) throws -> Grant {
        guard let mapping = node.mapping else { throw PlanError(message: "account \(account): each grant is a mapping") }
        let amount = try credits(mapping["amount"] ?? Node(""), "grant amount in \(account)")
        let sources = ["recurring": GrantSource.recurring, "top-up": .topUp, "topUp": .topUp, "promotional": .promotional, "manual": .manual]
        let sourceName = mapping["source"]?.string ?? "manual"
        guard let source = sources[sourceName] else { throw PlanError(message: "account \(account): unknown grant source \"\(sourceName)\"") }
        let expiry: Expiry
        let expiresText = mapping["expires"]?.string ?? "never"
        switch expiresText {
        case "never": expiry = .never
        case "period-end": expiry = .periodEnd
        case let text:
            if let microseconds = try? TimeParser.duration(text) {
                expiry = .after(microseconds)
            } else if let instant = try? TimeParser.instant(text) {
                expiry = .at(instant)
            } else {
                throw PlanError(message: "account \(account): expires must be never, period-end, a time or a duration, not \"\(text)\"")
            }
        }
        return Grant(
            amount: amount, priority: Int32(mapping["priority"]?.int ?? 0), member: mapping["member"]?.string, expires: expiry,
            expiresText: expiresText, source: source)
    }

    static func credits(_ node: Node, _ what: String) throws -> Credits {
        guard let value = node.int else { throw PlanError(message: "\(what) must be a whole number of credits") }
        return Int64(value)
    }
}
