import ArgumentParser
import Foundation
import TollgateClient
import TollgateLedger
import TollgateWire
import Yams

/// `tollgate apply FILE`: sets up products, rates, accounts, members, groups, caps, policies
/// and grants from one YAML or JSON file. See examples/team-plan.yaml.
///
/// Nothing is sent until the whole file has been read and checked: unknown keys and values of
/// the wrong kind are refused with the file's line, and every step is first applied to an
/// empty ledger in this process, so whatever the server would refuse for its input (an
/// identifier, an amount, a percentage out of range) is refused before anything changes.
///
/// Settings (rates, caps, overage, subscriptions, seats) are absolute, so applying a file again
/// converges to it; accounts, members and groups that exist are left alone. Grants add money,
/// so they are issued once: each is sent under an idempotency key derived from its account, its
/// place (or `id`) and everything it says. Before sending, apply asks the server which grants of
/// accounts that already exist it has seen (a side-effect-free probe under each key). A grant
/// the server has seen is left alone. One it has not — new in the file, edited since it was
/// applied, or applied longer ago than the server keeps keys (24 hours by default) — is not
/// issued on an existing account unless `--new-grants` says so: then apply refuses the whole
/// file, sends nothing, and says which grants and why.
struct Apply: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply a plan file (YAML or JSON) of products, accounts, members, groups and grants.",
        discussion: """
            The whole file is read and checked before anything is sent. Settings converge to the \
            file; accounts, members and groups that exist are left alone; a grant is issued once. \
            On an account that already exists, a grant the server has not seen (new in the file, \
            edited since it was applied, or applied longer ago than the server keeps idempotency \
            keys, 24 h by default) is issued only with --new-grants: without it, apply sends \
            nothing and lists those grants. To change an issued grant, void it (tollgate grant \
            void ACCOUNT ID) and add the new one. --dry-run prints what would change.

            Exit status: 0 applied (or nothing to do); 1 the server could not be reached or \
            failed; 4 the server refused a step; 64 the file cannot be read or is not a valid \
            plan; 65 grants not issued (see above), nothing sent.
            """)
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The plan file.") var file: String
    @Flag(help: "Print what would be created, changed and left alone; send nothing.") var dryRun = false
    @Flag(help: "Also issue grants the server has not seen on accounts that already exist.") var newGrants = false

    func run() async throws {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ValidationError("cannot read \(file)") }
        let now = Instant(microsecondsSinceEpoch: Int64(Date().timeIntervalSince1970 * 1_000_000))
        let steps: [PlanStep]
        do {
            let plan = try Plan(yaml: text)
            steps = plan.steps(now: now)
            try PlanStep.check(steps, plan: plan, now: now)
        } catch let error as PlanError {
            // A plan error is the file's, not the command line's: no usage text after it.
            let location = "\(file):\(error.line.map { "\($0):" } ?? "")"
            if options.json {
                print(Output.json(["file": file, "line": error.line as Any, "error": error.message]))
            } else {
                FileHandle.standardError.write(Data("tollgate: \(location) \(error.message)\n".utf8))
            }
            throw ExitCode(ExitStatus.usage)
        }
        let client = try await options.connect()
        do {
            try await apply(steps, client: client, now: now)
        } catch let error as CLIError {
            await client.close()
            options.fail(error.description)
            throw ExitCode(ExitStatus.failed)
        } catch {
            await client.close()
            throw error
        }
        await client.close()
    }

    func apply(_ steps: [PlanStep], client: TollgateClient, now: Instant) async throws {
        // What exists on the server, and which grants of existing accounts it has seen.
        var existing: [String: Balance] = [:]
        var progress = TerminalProgress(unit: "steps")
        for account in Set(steps.map(\.account)).sorted() where !account.isEmpty {
            do {
                existing[account] = try await client.balance(account: account)
            } catch {
                guard case .refused(let refusal) = error, refusal.error.code == .unknownAccount else {
                    throw CLIError.failed("cannot read account \(account): \(error)")
                }
            }
        }
        var seen: Set<String> = []
        var unseen: [PlanStep] = []
        for step in steps {
            guard case .grant(let grant) = step.kind, existing[step.account] != nil else { continue }
            progress.advance()
            if try await serverHasSeen(step.key, grant: grant, account: step.account, client: client) {
                seen.insert(step.key)
            } else {
                unseen.append(step)
            }
        }

        if dryRun {
            progress.finish()
            var lines: [String] = []
            var report: [[String: Any]] = []
            for step in steps {
                let outcome = await dryRunOutcome(step, existing: existing, seen: seen, client: client)
                lines.append(outcome.padding(toLength: max(9, outcome.count + 1), withPad: " ", startingAt: 0) + step.label)
                report.append(["step": step.label, "line": step.line as Any, "outcome": outcome.trimmingCharacters(in: .whitespaces)])
            }
            print(options.json ? Output.json(["file": file, "dryRun": true, "steps": report]) : lines.joined(separator: "\n"))
            if !unseen.isEmpty && !newGrants { throw ExitCode(ExitStatus.grantsNotIssued) }
            return
        }
        if !unseen.isEmpty && !newGrants {
            progress.finish()
            let lines = unseen.map { "  \(file):\($0.line.map(String.init) ?? "?"): \($0.label)" }
            let message = """
                not applied — nothing was sent. These grants are on accounts that already exist, and the server has not seen them:
                \(lines.joined(separator: "\n"))
                Each is new in the file, edited since it was applied, or applied longer ago than the server keeps idempotency keys \
                (24 h by default), and issuing it would add credits. Pass --new-grants to issue them; to change a grant that was \
                issued, void it first (tollgate grant void ACCOUNT ID).
                """
            if options.json {
                print(Output.json(["file": file, "error": "grants not issued", "grants": unseen.map { ["step": $0.label, "line": $0.line as Any] }]))
            } else {
                FileHandle.standardError.write(Data("tollgate: \(message)\n".utf8))
            }
            throw ExitCode(ExitStatus.grantsNotIssued)
        }

        var lines: [String] = []
        var report: [[String: Any]] = []
        var refused = 0
        var periodEnds: [String: Instant] = [:]
        for step in steps {
            progress.advance()
            if seen.contains(step.key) {
                // Issued by an earlier apply: its instants were that apply's, so it is not sent again.
                lines.append("issued   \(step.label) (by an earlier apply)")
                report.append(["step": step.label, "outcome": "issuedBefore"])
                continue
            }
            var command = step.command
            if case .grant(let grant) = step.kind, case .periodEnd = grant.expires {
                if periodEnds[step.account] == nil {
                    do {
                        periodEnds[step.account] = try await client.balance(account: step.account).periodEnd
                    } catch {
                        throw CLIError.failed("cannot read \(step.account)'s period: \(error)")
                    }
                }
                command = grant.command(account: step.account, now: now, periodEnd: periodEnds[step.account]!)
            }
            do {
                let answer = try await client.apply(command, key: step.key)
                var line = "ok       \(step.label)"
                var outcome: [String: Any] = ["step": step.label, "outcome": "ok"]
                if case .grantAdded(let id) = answer {
                    line += " (grant \(id))"
                    outcome["grant"] = id
                }
                lines.append(line)
                report.append(outcome)
            } catch {
                guard case .refused(let refusal) = error else { throw CLIError.failed("\(step.label): \(error)") }
                if step.tolerating.contains(refusal.error.code) {
                    lines.append("exists   \(step.label)")
                    report.append(["step": step.label, "outcome": "exists"])
                } else {
                    refused += 1
                    lines.append("REFUSED  \(step.label): \(refusal.error)")
                    report.append(["step": step.label, "outcome": "refused", "reason": refusal.error.code.identifier, "subject": refusal.error.subject])
                }
            }
        }
        progress.finish()
        print(options.json ? Output.json(["file": file, "steps": report, "refused": refused]) : lines.joined(separator: "\n"))
        if refused > 0 { throw ExitCode(ExitStatus.refused) }
    }

    /// Whether the server keeps `key` from an earlier apply: an ADD_GRANT of 0 credits under it
    /// is refused as a conflict when the key is known and as out of range when it is not (a
    /// refusal of the input itself claims no key, so the probe changes nothing).
    func serverHasSeen(_ key: String, grant: PlanStep.Grant, account: String, client: TollgateClient) async throws -> Bool {
        var probe = AddGrant(account: account, scope: grant.scope, amount: 0, effectiveAt: Instant(microsecondsSinceEpoch: 0))
        probe.priority = grant.priority
        do {
            _ = try await client.apply(.addGrant(probe), key: key)
        } catch {
            if case .refused(let refusal) = error {
                switch refusal.error.code {
                case .idempotencyConflict: return true
                case .amountOutOfRange, .invalidArgument, .unknownMember: return false
                default: break
                }
            }
            throw CLIError.failed("cannot ask the server about \(account)'s grants: \(error)")
        }
        throw CLIError.failed("the server accepted a grant of 0 credits to \(account); refusing to go on")
    }

    func dryRunOutcome(_ step: PlanStep, existing: [String: Balance], seen: Set<String>, client: TollgateClient) async -> String {
        let balance = existing[step.account]
        switch step.kind {
        case .account:
            return balance == nil ? "create" : "exists"
        case .member(let member):
            guard balance != nil else { return "create" }
            return (try? await client.balance(account: step.account, member: member)) == nil ? "create" : "exists"
        case .group(let group, let members):
            guard balance != nil else { return "create" }
            for member in members {
                if let levels = try? await client.balance(account: step.account, member: member).levels,
                    levels.contains(where: { $0.level == .group && $0.subject == group })
                {
                    return "exists"
                }
            }
            return "create?"
        case .groupMember(let group, let member):
            guard balance != nil, let levels = try? await client.balance(account: step.account, member: member).levels else { return "add" }
            return levels.contains { $0.level == .group && $0.subject == group } ? "exists" : "add"
        case .grant:
            if balance == nil { return "issue" }
            return seen.contains(step.key) ? "issued" : (newGrants ? "issue" : "NOT ISSUED")
        case .accountCap(let cap):
            guard let balance else { return "set" }
            return balance.levels.first { $0.level == .account }?.limit == cap ? "same" : "change"
        case .overage(let policy):
            guard let balance else { return "set" }
            return balance.funds.overage == policy ? "same" : "change"
        case .memberCap(let member, let cap):
            guard balance != nil, let levels = try? await client.balance(account: step.account, member: member).levels else { return "set" }
            return levels.first { $0.level == .member }?.limit == cap ? "same" : "change"
        case .setting:
            return "set"
        }
    }
}

struct PlanError: Error {
    var message: String
    var line: Int?

    init(_ message: String, at node: Node? = nil) {
        self.message = message
        self.line = node?.mark?.line
    }
}

/// One request `apply` sends, with where it came from in the file.
struct PlanStep {
    struct Grant {
        var scope: GrantScope
        var amount: Credits
        var priority: Int32
        var expires: Plan.Expiry
        var source: GrantSource
        var products: [String] = []

        func command(account: String, now: Instant, periodEnd: Instant) -> Command {
            var expiresAt = Instant.distantFuture
            switch expires {
            case .never: break
            case .at(let instant): expiresAt = instant
            case .after(let microseconds): expiresAt = now.adding(microseconds: microseconds)
            case .periodEnd: expiresAt = periodEnd
            }
            return .addGrant(
                AddGrant(account: account, scope: scope, amount: amount, priority: priority, effectiveAt: now, expiresAt: expiresAt, source: source, products: products))
        }
    }

    enum Kind {
        case account
        case member(String)
        case group(String, members: [String])
        case groupMember(String, String)
        case grant(Grant)
        case accountCap(Credits?)
        case overage(OveragePolicy)
        case memberCap(String, Credits?)
        case setting
    }

    var label: String
    var account: String
    var command: Command
    var key: String
    var kind: Kind
    var line: Int?
    var tolerating: Set<LedgerError.Code> = []

    /// Applies every step to an empty ledger in this process: a step refused there for its
    /// input would be refused by the server, so the file is refused before anything is sent.
    /// Parents and plans the file does not define are taken to exist on the server.
    static func check(_ steps: [PlanStep], plan: Plan, now: Instant) throws {
        var ledger = Ledger(startingAt: now)
        let defined = Set(plan.accounts.map(\.id))
        let templates = Set(plan.templates.map(\.name))
        var stubbed: Set<String> = []
        for account in plan.accounts {
            if let parent = account.parent, !defined.contains(parent), stubbed.insert(parent).inserted {
                _ = ledger.applyRecording(.createAccount(CreateAccount(account: parent)), key: "stub-\(parent)", at: now)
            }
        }
        for (index, step) in steps.enumerated() {
            var command = step.command
            if case .provision(let provision) = command, !templates.contains(provision.plan) {
                // A plan defined on the server only: stand in an account with its members.
                command = .createAccount(CreateAccount(account: provision.account, parent: provision.parent))
                for member in provision.members {
                    _ = ledger.applyRecording(.addMember(account: provision.account, member: member), key: "stub-\(index)-\(member)", at: now)
                }
            }
            if case .setAccountRate(_, let product, _, _) = command, !plan.products.contains(where: { $0.0 == product }) {
                _ = ledger.applyRecording(.setRate(product: product, creditsPerUnit: 1, effectiveAt: now), key: "stub-rate-\(product)", at: now)
            }
            if case .grant(let grant) = step.kind, case .periodEnd = grant.expires,
                case .success(let balance) = ledger.balance(account: step.account, at: now)
            {
                command = grant.command(account: step.account, now: now, periodEnd: balance.periodEnd)
            }
            let answer = ledger.applyRecording(command, key: "check-\(index)", at: now).answer
            if let refusal = answer.refusal, !step.tolerating.contains(refusal.error.code) {
                var error = PlanError("\(step.label): \(refusal.error)")
                error.line = step.line
                throw error
            }
        }
    }
}

/// A plan file, read into values. Every mapping accepts only the keys listed for it, and every
/// value must be of its kind: a mistyped key or value is an error naming the line, never ignored.
struct Plan {
    /// A cap over a window (`caps:` of an account, member or group): `{per, limit, soft}`.
    struct WindowCap {
        var window: CapWindow
        var mode: CapMode
        var limit: Credits?
    }

    struct Member {
        var id: String
        var cap: Credits?
        var caps: [WindowCap] = []
        /// The most holds it may have open at once (`concurrency:`).
        var concurrency: Int64?
        var line: Int?
    }

    struct Group {
        var id: String
        var cap: Credits?
        var caps: [WindowCap] = []
        var members: [String]
        var line: Int?
    }

    enum Expiry {
        case never
        case periodEnd
        case at(Instant)
        case after(Int64)
    }

    struct Grant {
        /// The grant's name in the file (`id`), else its place among the account's grants.
        var identity: String
        var amount: Credits
        var priority: Int32
        var member: String?
        var expires: Expiry
        var expiresText: String
        var source: GrantSource
        /// The products it pays for (`products:`); empty: any.
        var products: [String] = []
        var line: Int?
    }

    struct Account {
        var id: String
        var parent: String?
        var overage: OveragePolicy
        var overageSet = false
        var cap: Credits?
        var capSet = false
        var caps: [WindowCap] = []
        /// The most holds the account may have open at once, and each member (`concurrency:`,
        /// `memberConcurrency:`).
        var concurrency: Int64?
        var memberConcurrency: Int64?
        var members: [Member]
        var groups: [Group]
        var grants: [Grant]
        var rates: [(String, Credits?)]
        var subscription: Subscription?
        var seats: Int64?
        /// Provision from this plan template (one step, all or nothing).
        var plan: String?
        var line: Int?
    }

    var products: [(String, Credits)] = []
    var templates: [TollgateLedger.Plan] = []
    var accounts: [Account] = []
    /// Metered products' dimension rates (`metered:`).
    var metered: [(product: String, dimension: String, rate: MeteredRate)] = []

    init(yaml: String) throws {
        let root: Node?
        do {
            root = try Yams.compose(yaml: yaml)
        } catch {
            throw PlanError("not valid YAML or JSON: \(error)")
        }
        guard let root, let mapping = root.mapping else { throw PlanError("the top level must be a mapping of products, plans and accounts", at: root) }
        for (key, value) in mapping {
            switch try Plan.key(key, of: "the top level", known: ["products", "metered", "plans", "accounts"]) {
            case "metered":
                // metered: {gpt-x: {input: {credits: 3, per: 1000}, output: {credits: 15, per: 1000}}}
                for (product, dimensions) in try Plan.mapping(value, "metered (product ids to their dimensions' rates)") {
                    let name = try Plan.string(product, "a product id")
                    for (dimension, rate) in try Plan.mapping(dimensions, "metered \(name) (dimensions to {credits, per})") {
                        let fields = try Plan.mapping(rate, "the rate of \(name) \(dimension.string ?? "?")")
                        for field in fields.keys { _ = try Plan.key(field, of: "the rate of \(name) \(dimension.string ?? "?")", known: ["credits", "per"]) }
                        guard let credits = fields["credits"] else { throw PlanError("the rate of \(name) \(dimension.string ?? "?") needs credits", at: rate) }
                        let per = try fields["per"].map { try Plan.credits($0, "per") } ?? 1
                        guard MeteredRate.pers.contains(per) else { throw PlanError("per must be 1, 1000 or 1000000, not \(per)", at: fields["per"]) }
                        metered.append((name, try Plan.string(dimension, "a dimension"), MeteredRate(credits: try Plan.credits(credits, "credits"), per: per)))
                    }
                }
            case "products":
                for (product, rate) in try Plan.mapping(value, "products (product ids to credits per unit)") {
                    products.append((try Plan.string(product, "a product id"), try Plan.credits(rate, "the rate of \(product.string ?? "?")")))
                }
            case "plans":
                for (name, template) in try Plan.mapping(value, "plans (plan names to templates)") {
                    templates.append(try Plan.template(try Plan.string(name, "a plan name"), template))
                }
            default:
                accounts = try Plan.sequence(value, "accounts").map(Plan.account)
            }
        }
        try checkNames()
    }

    /// Names used twice, and members named by groups and grants but not listed.
    func checkNames() throws {
        var accountIDs: Set<String> = []
        for account in accounts {
            guard accountIDs.insert(account.id).inserted else { throw PlanError("account \(account.id) is listed twice", line: account.line) }
            var members: Set<String> = []
            for member in account.members where !members.insert(member.id).inserted {
                throw PlanError("account \(account.id): member \(member.id) is listed twice", line: member.line)
            }
            var groups: Set<String> = []
            for group in account.groups {
                guard groups.insert(group.id).inserted else { throw PlanError("account \(account.id): group \(group.id) is listed twice", line: group.line) }
                var inGroup: Set<String> = []
                for member in group.members {
                    guard members.contains(member) else {
                        throw PlanError("account \(account.id): group \(group.id) names \(member), who is not in the account's members", line: group.line)
                    }
                    guard inGroup.insert(member).inserted else { throw PlanError("account \(account.id): group \(group.id) names \(member) twice", line: group.line) }
                }
            }
            var grants: Set<String> = []
            for grant in account.grants {
                guard grants.insert(grant.identity).inserted else { throw PlanError("account \(account.id): two grants have the id \(grant.identity)", line: grant.line) }
                if let member = grant.member, !members.contains(member) {
                    throw PlanError("account \(account.id): a grant is for \(member), who is not in the account's members", line: grant.line)
                }
            }
            if let parent = account.parent, accounts.firstIndex(where: { $0.id == parent }).map({ accounts[$0].line ?? 0 > account.line ?? 0 }) == true {
                throw PlanError("account \(account.id): its parent \(parent) must be listed before it", line: account.line)
            }
        }
    }

    /// The requests the file stands for, in the order they are sent.
    func steps(now: Instant) -> [PlanStep] {
        var steps: [PlanStep] = []
        let run = String(UInt64(bitPattern: now.microsecondsSinceEpoch), radix: 16)
        func add(_ label: String, _ account: String, _ command: Command, _ kind: PlanStep.Kind, line: Int?, tolerating: Set<LedgerError.Code> = []) {
            // A grant's key names it and everything it says, the same on every apply, so that it
            // is issued once. Every other step sets or creates something absolute: it is sent
            // under a key of this run, so applying again sets the file's values again (a key
            // kept from an earlier apply would answer with what was done then, and set nothing).
            let key: String
            if case .grant = kind {
                key = "apply-" + String(Plan.stableHash("\(label)#1"), radix: 16)
            } else {
                key = "apply-\(run)-\(steps.count)"
            }
            steps.append(PlanStep(label: label, account: account, command: command, key: key, kind: kind, line: line, tolerating: tolerating))
        }
        for (product, rate) in products {
            add("rate \(product) = \(rate)", "", .setRate(product: product, creditsPerUnit: rate, effectiveAt: now), .setting, line: nil)
        }
        for entry in metered {
            add(
                "rate \(entry.product) \(entry.dimension) = \(entry.rate.credits) per \(entry.rate.per)", "",
                .setMeteredRate(product: entry.product, dimension: entry.dimension, rate: entry.rate, effectiveAt: now), .setting, line: nil)
        }
        for template in templates {
            add("plan \(template.name)", "", .definePlan(template), .setting, line: nil)
        }
        for account in accounts {
            let id = account.id
            if let template = account.plan {
                add(
                    "account \(id) on plan \(template)", id,
                    .provision(Provision(account: id, plan: template, parent: account.parent, seats: account.seats ?? 0, members: account.members.map(\.id))),
                    .account, line: account.line, tolerating: [.alreadyExists])
                if account.overageSet {
                    add("overage \(id) = \(account.overage)", id, .setOverage(account: id, policy: account.overage), .overage(account.overage), line: account.line)
                }
            } else {
                add(
                    "account \(id)", id, .createAccount(CreateAccount(account: id, parent: account.parent, overage: account.overage)), .account, line: account.line,
                    tolerating: [.alreadyExists])
                add("overage \(id) = \(account.overage)", id, .setOverage(account: id, policy: account.overage), .overage(account.overage), line: account.line)
            }
            if account.capSet {
                add("cap \(id) = \(account.cap.map(String.init) ?? "none")", id, .setAccountCap(account: id, limit: account.cap), .accountCap(account.cap), line: account.line)
            }
            func addCaps(_ caps: [WindowCap], _ target: CapTarget, _ name: String, line: Int?) {
                for cap in caps {
                    add(
                        "\(cap.mode == .soft ? "soft cap" : "cap") per \(cap.window.name) \(name) = \(cap.limit.map(String.init) ?? "none")", id,
                        .setCap(SetCap(account: id, target: target, window: cap.window, mode: cap.mode, limit: cap.limit)), .setting, line: line)
                }
            }
            addCaps(account.caps, .account, id, line: account.line)
            if let limit = account.concurrency {
                add("open holds \(id) at most \(limit)", id, .setConcurrency(account: id, target: .account, limit: limit), .setting, line: account.line)
            }
            if let limit = account.memberConcurrency {
                add("open holds of each member of \(id) at most \(limit)", id, .setConcurrency(account: id, target: .eachMember, limit: limit), .setting, line: account.line)
            }
            for (product, rate) in account.rates {
                add(
                    "rate \(product) = \(rate.map(String.init) ?? "the rate card") for \(id)", id,
                    .setAccountRate(account: id, product: product, creditsPerUnit: rate, effectiveAt: now), .setting, line: account.line)
            }
            for member in account.members {
                add("member \(id)/\(member.id)", id, .addMember(account: id, member: member.id), .member(member.id), line: member.line, tolerating: [.alreadyExists])
                if let cap = member.cap {
                    add("cap \(id)/\(member.id) = \(cap)", id, .setMemberCap(account: id, member: member.id, limit: cap), .memberCap(member.id, cap), line: member.line)
                }
                addCaps(member.caps, .member(member.id), "\(id)/\(member.id)", line: member.line)
                if let limit = member.concurrency {
                    add(
                        "open holds \(id)/\(member.id) at most \(limit)", id, .setConcurrency(account: id, target: .member(member.id), limit: limit), .setting,
                        line: member.line)
                }
            }
            for group in account.groups {
                add("group \(id)/\(group.id)", id, .createGroup(account: id, group: group.id), .group(group.id, members: group.members), line: group.line, tolerating: [.alreadyExists])
                if let cap = group.cap {
                    add("cap group \(id)/\(group.id) = \(cap)", id, .setGroupCap(account: id, group: group.id, limit: cap), .setting, line: group.line)
                }
                addCaps(group.caps, .group(group.id), "group \(id)/\(group.id)", line: group.line)
                for member in group.members {
                    add(
                        "group \(id)/\(group.id) + \(member)", id, .addToGroup(account: id, group: group.id, member: member), .groupMember(group.id, member),
                        line: group.line, tolerating: [.alreadyExists])
                }
            }
            if let terms = account.subscription {
                if let seats = account.seats {
                    add("seats \(id) = \(seats)", id, .setSeats(account: id, seats: seats, effectiveAt: now), .setting, line: account.line)
                }
                let scope = terms.scope == .pooled ? "pooled" : "per member"
                add("subscription \(id): \(terms.creditsPerSeat) credits per seat, \(scope)", id, .setSubscription(account: id, terms: terms), .setting, line: account.line)
            }
            for grant in account.grants {
                let step = PlanStep.Grant(
                    scope: grant.member.map { .member($0) } ?? .pool, amount: grant.amount, priority: grant.priority, expires: grant.expires, source: grant.source,
                    products: grant.products)
                // Everything the grant says is in its label, so an edited grant is another key.
                let products = grant.products.isEmpty ? "" : ", for \(grant.products.joined(separator: ", "))"
                let label = "grant \(grant.identity) of \(id): \(grant.amount)\(grant.member.map { " to \($0)" } ?? "") at priority \(grant.priority), \(Plan.sourceName(grant.source)), expires \(grant.expiresText)\(products)"
                add(label, id, step.command(account: id, now: now, periodEnd: now), .grant(step), line: grant.line)
            }
        }
        return steps
    }

    // MARK: - Reading nodes

    static func key(_ node: Node, of what: String, known: [String]) throws -> String {
        guard let name = node.string, known.contains(name) else {
            throw PlanError("\(what): unknown key \"\(node.string ?? "?")\"; expected \(known.joined(separator: ", "))", at: node)
        }
        return name
    }

    static func mapping(_ node: Node, _ what: String) throws -> Node.Mapping {
        guard let mapping = node.mapping else { throw PlanError("\(what) must be a mapping", at: node) }
        return mapping
    }

    static func sequence(_ node: Node, _ what: String) throws -> Node.Sequence {
        guard let sequence = node.sequence else { throw PlanError("\(what) must be a list", at: node) }
        return sequence
    }

    static func string(_ node: Node, _ what: String) throws -> String {
        guard let scalar = node.scalar else { throw PlanError("\(what) must be a single value", at: node) }
        return scalar.string
    }

    /// `caps:`, a list of `{per: minute | hour | day | period, limit: CREDITS | none, soft: BOOL}`.
    static func windowCaps(_ node: Node, _ what: String) throws -> [WindowCap] {
        try sequence(node, "\(what): caps").map { entry in
            let fields = try Plan.mapping(entry, "\(what): each cap ({per, limit, soft})")
            for field in fields.keys { _ = try Plan.key(field, of: "\(what): cap", known: ["per", "limit", "soft"]) }
            guard let per = fields["per"], let limit = fields["limit"] else { throw PlanError("\(what): each cap needs per and limit", at: entry) }
            let name = try string(per, "\(what): per")
            guard let window = CapWindow(name: name) else {
                throw PlanError("\(what): per must be minute, hour, day or period, not \"\(name)\"", at: per)
            }
            let soft = try fields["soft"].map { try bool($0, "\(what): soft") } ?? false
            return WindowCap(
                window: window, mode: soft ? .soft : .hard, limit: limit.string == "none" ? nil : try credits(limit, "\(what): cap limit"))
        }
    }

    static func credits(_ node: Node, _ what: String) throws -> Credits {
        guard let value = node.int, let credits = Int64(exactly: value) else { throw PlanError("\(what) must be a whole number of credits", at: node) }
        return credits
    }

    static func priority(_ node: Node, _ what: String) throws -> Int32 {
        guard let value = node.int, let narrow = Int32(exactly: value) else {
            throw PlanError("\(what) must be a whole number from \(Int32.min) to \(Int32.max)", at: node)
        }
        return narrow
    }

    static func bool(_ node: Node, _ what: String) throws -> Bool {
        guard let value = node.bool else { throw PlanError("\(what) must be true or false", at: node) }
        return value
    }

    static func duration(_ node: Node, _ what: String) throws -> Int64 {
        let text = try string(node, what)
        guard let microseconds = try? TimeParser.duration(text) else { throw PlanError("\(what) must be a duration such as 30d, not \"\(text)\"", at: node) }
        return microseconds
    }

    static func overage(_ node: Node, _ what: String) throws -> OveragePolicy {
        let text = try string(node, what)
        guard let policy = try? parseOverage(text) else {
            throw PlanError("\(what) must be deny, overdraft:LIMIT or finish:PERCENT, not \"\(text)\"", at: node)
        }
        return policy
    }

    static let sources: [String: GrantSource] = ["recurring": .recurring, "top-up": .topUp, "promotional": .promotional, "manual": .manual]

    static func sourceName(_ source: GrantSource) -> String {
        sources.first { $0.value == source }?.key ?? "\(source)"
    }

    // MARK: - Sections

    static func account(_ node: Node) throws -> Account {
        let mapping = try Plan.mapping(node, "each account")
        guard let idNode = mapping["id"] else { throw PlanError("each account needs an id", at: node) }
        let id = try string(idNode, "an account id")
        let what = "account \(id)"
        var account = Account(
            id: id, parent: nil, overage: .deny, cap: nil, members: [], groups: [], grants: [], rates: [], subscription: nil,
            seats: nil, plan: nil, line: node.mark?.line)
        let known = [
            "id", "parent", "overage", "cap", "caps", "concurrency", "memberConcurrency", "members", "groups", "grants", "subscription", "plan", "seats", "rates",
        ]
        for (key, value) in mapping {
            switch try Plan.key(key, of: what, known: known) {
            case "id": break
            case "parent": account.parent = try string(value, "\(what): parent")
            case "overage":
                account.overage = try overage(value, "\(what): overage")
                account.overageSet = true
            case "cap":
                account.cap = value.string == "none" ? nil : try credits(value, "\(what): cap")
                account.capSet = true
            case "caps": account.caps = try windowCaps(value, what)
            case "concurrency": account.concurrency = try credits(value, "\(what): concurrency")
            case "memberConcurrency": account.memberConcurrency = try credits(value, "\(what): memberConcurrency")
            case "members":
                account.members = try sequence(value, "\(what): members").map { member in
                    if member.scalar != nil { return Member(id: try string(member, "a member id"), cap: nil, line: member.mark?.line) }
                    let fields = try Plan.mapping(member, "\(what): each member (an id or {id, cap, caps, concurrency})")
                    for field in fields.keys { _ = try Plan.key(field, of: "\(what): member", known: ["id", "cap", "caps", "concurrency"]) }
                    guard let name = fields["id"] else { throw PlanError("\(what): each member needs an id", at: member) }
                    let memberID = try string(name, "a member id")
                    return Member(
                        id: memberID, cap: try fields["cap"].map { try credits($0, "member \(memberID) cap") },
                        caps: try fields["caps"].map { try windowCaps($0, "member \(memberID)") } ?? [],
                        concurrency: try fields["concurrency"].map { try credits($0, "member \(memberID) concurrency") }, line: member.mark?.line)
                }
            case "groups":
                account.groups = try sequence(value, "\(what): groups").map { group in
                    let fields = try Plan.mapping(group, "\(what): each group")
                    for field in fields.keys { _ = try Plan.key(field, of: "\(what): group", known: ["id", "cap", "caps", "members"]) }
                    guard let name = fields["id"] else { throw PlanError("\(what): each group needs an id", at: group) }
                    let groupID = try string(name, "a group id")
                    let members = try fields["members"].map { try sequence($0, "group \(groupID) members").map { try string($0, "a member id") } } ?? []
                    return Group(
                        id: groupID, cap: try fields["cap"].map { try credits($0, "group \(groupID) cap") },
                        caps: try fields["caps"].map { try windowCaps($0, "group \(groupID)") } ?? [], members: members, line: group.mark?.line)
                }
            case "grants":
                account.grants = try sequence(value, "\(what): grants").enumerated().map { index, grant in try Plan.grant(grant, of: what, index: index + 1) }
            case "subscription":
                (account.subscription, account.seats) = try subscription(value, account: id)
            case "plan": account.plan = try string(value, "\(what): plan")
            case "seats": account.seats = try credits(value, "\(what): seats")
            default:
                for (product, rate) in try Plan.mapping(value, "\(what): rates (product ids to credits per unit, or none)") {
                    let name = try string(product, "a product id")
                    account.rates.append((name, rate.string == "none" ? nil : try credits(rate, "\(what): rate \(name)")))
                }
            }
        }
        return account
    }

    /// `subscription: {credits-per-seat, scope: pooled | per-member, seats, prorate, removal:
    /// keep | claw-back, rollover-cap, priority}`.
    static func subscription(_ node: Node, account: String, seatsRequired: Bool = true) throws -> (Subscription, Int64?) {
        let what = "account \(account)"
        let mapping = try Plan.mapping(node, "\(what): subscription")
        for key in mapping.keys {
            _ = try Plan.key(key, of: "\(what): subscription", known: ["credits-per-seat", "scope", "seats", "prorate", "removal", "rollover-cap", "priority"])
        }
        guard let perSeat = mapping["credits-per-seat"] else { throw PlanError("\(what): a subscription needs credits-per-seat", at: node) }
        var terms = Subscription(creditsPerSeat: try credits(perSeat, "\(what): credits-per-seat"))
        if let scope = mapping["scope"] {
            switch try string(scope, "\(what): subscription scope") {
            case "pooled": terms.scope = .pooled
            case "per-member": terms.scope = .perMember
            case let other: throw PlanError("\(what): subscription scope must be pooled or per-member, not \"\(other)\"", at: scope)
            }
        }
        if let prorate = mapping["prorate"] { terms.prorate = try bool(prorate, "\(what): prorate") }
        if let removal = mapping["removal"] {
            switch try string(removal, "\(what): removal") {
            case "keep": terms.removal = .keep
            case "claw-back": terms.removal = .clawBack
            case let other: throw PlanError("\(what): removal must be keep or claw-back, not \"\(other)\"", at: removal)
            }
        }
        if let cap = mapping["rollover-cap"] { terms.rolloverCap = try credits(cap, "\(what): rollover-cap") }
        if let priority = mapping["priority"] { terms.priority = try Plan.priority(priority, "\(what): priority") }
        let seats = try mapping["seats"].map { try credits($0, "\(what): seats") }
        if terms.scope == .perMember && seats != nil {
            throw PlanError("\(what): a per-member subscription's seats are its members; drop seats", at: mapping["seats"])
        }
        if seatsRequired && terms.scope == .pooled && seats == nil {
            throw PlanError("\(what): a pooled subscription needs seats", at: node)
        }
        return (terms, seats)
    }

    /// A plan template: `{overage, subscription: {...}, grants: [{amount, priority, source,
    /// expires: never | DURATION}], alerts: [{id, credits | percent | depleted: true}],
    /// recharge: {below, amount, up-to, max-per-period, priority, expires-after}}`.
    static func template(_ name: String, _ node: Node) throws -> TollgateLedger.Plan {
        let what = "plan \(name)"
        let mapping = try Plan.mapping(node, what)
        var plan = TollgateLedger.Plan(name: name)
        for (key, value) in mapping {
            switch try Plan.key(key, of: what, known: ["overage", "subscription", "grants", "alerts", "recharge"]) {
            case "overage":
                plan.overage = try overage(value, "\(what): overage")
            case "subscription":
                let (terms, seats) = try subscription(value, account: what, seatsRequired: false)
                guard seats == nil else { throw PlanError("\(what): seats are given when an account is provisioned, not in the plan", at: value) }
                plan.subscription = terms
            case "grants":
                plan.grants = try sequence(value, "\(what): grants").enumerated().map { index, node in
                    let grant = try Plan.grant(node, of: what, index: index + 1, known: ["amount", "priority", "source", "expires"])
                    let lifetime: Int64?
                    switch grant.expires {
                    case .never: lifetime = nil
                    case .after(let microseconds): lifetime = microseconds
                    default: throw PlanError("\(what): a plan's grant expires never or after a duration", at: node)
                    }
                    return PlanGrant(amount: grant.amount, priority: grant.priority, source: grant.source, lifetimeMicroseconds: lifetime)
                }
            case "alerts":
                plan.alerts = try sequence(value, "\(what): alerts").map { node in
                    let alert = try Plan.mapping(node, "\(what): each alert")
                    for field in alert.keys { _ = try Plan.key(field, of: "\(what): alert", known: ["id", "credits", "percent", "depleted"]) }
                    guard let idNode = alert["id"] else { throw PlanError("\(what): each alert needs an id", at: node) }
                    let id = try string(idNode, "an alert id")
                    let thresholds = ["credits", "percent", "depleted"].filter { alert[$0] != nil }
                    guard thresholds.count == 1 else { throw PlanError("\(what): alert \(id) needs one of credits, percent or depleted: true", at: node) }
                    if let credits = alert["credits"] { return AlertRule(id: id, threshold: .credits(try Plan.credits(credits, "alert \(id) credits"))) }
                    if let percent = alert["percent"] { return AlertRule(id: id, threshold: .percentOfAllotment(try Plan.credits(percent, "alert \(id) percent"))) }
                    guard try bool(alert["depleted"]!, "alert \(id) depleted") else { throw PlanError("\(what): alert \(id): depleted can only be true", at: node) }
                    return AlertRule(id: id, threshold: .depleted)
                }
            default:
                let recharge = try Plan.mapping(value, "\(what): recharge")
                for field in recharge.keys {
                    _ = try Plan.key(field, of: "\(what): recharge", known: ["below", "amount", "up-to", "max-per-period", "priority", "expires-after"])
                }
                guard let below = recharge["below"], let amount = recharge["amount"] else { throw PlanError("\(what): recharge needs below and amount", at: value) }
                var rule = AutoRecharge(
                    below: try credits(below, "recharge below"), amount: try credits(amount, "recharge amount"),
                    maxPerPeriod: try recharge["max-per-period"].map { try credits($0, "max-per-period") } ?? 1)
                rule.upTo = try recharge["up-to"].map { try credits($0, "up-to") }
                if let priority = recharge["priority"] { rule.priority = try Plan.priority(priority, "recharge priority") }
                if let lifetime = recharge["expires-after"] { rule.expiresAfterMicroseconds = try duration(lifetime, "recharge expires-after") }
                plan.autoRecharge = rule
            }
        }
        return plan
    }

    static func grant(_ node: Node, of what: String, index: Int, known: [String] = ["id", "amount", "priority", "member", "expires", "source", "products"]) throws -> Grant {
        let mapping = try Plan.mapping(node, "\(what): each grant")
        for key in mapping.keys { _ = try Plan.key(key, of: "\(what): grant #\(index)", known: known) }
        guard let amountNode = mapping["amount"] else { throw PlanError("\(what): grant #\(index) needs an amount", at: node) }
        let amount = try credits(amountNode, "\(what): grant #\(index) amount")
        var source = GrantSource.manual
        if let sourceNode = mapping["source"] {
            let name = try string(sourceNode, "\(what): grant source")
            // `topUp` was read before; `top-up` is the one spelling now, as everywhere else.
            guard let value = sources[name == "topUp" ? "top-up" : name] else {
                throw PlanError("\(what): grant source must be one of \(sources.keys.sorted().joined(separator: ", ")), not \"\(name)\"", at: sourceNode)
            }
            source = value
        }
        let expiry: Expiry
        let expiresText = try mapping["expires"].map { try string($0, "\(what): expires") } ?? "never"
        switch expiresText {
        case "never": expiry = .never
        case "period-end": expiry = .periodEnd
        case let text:
            if let microseconds = try? TimeParser.duration(text) {
                expiry = .after(microseconds)
            } else if let instant = try? TimeParser.instant(text) {
                expiry = .at(instant)
            } else {
                throw PlanError("\(what): expires must be never, period-end, a time or a duration, not \"\(text)\"", at: mapping["expires"])
            }
        }
        return Grant(
            identity: try mapping["id"].map { try string($0, "a grant id") } ?? "#\(index)", amount: amount,
            priority: try mapping["priority"].map { try priority($0, "\(what): grant priority") } ?? 0,
            member: try mapping["member"].map { try string($0, "a member id") }, expires: expiry, expiresText: expiresText, source: source,
            products: try mapping["products"].map { try sequence($0, "\(what): grant #\(index) products").map { try string($0, "a product id") } } ?? [],
            line: node.mark?.line)
    }

    /// FNV-1a over the text, so the same file always yields the same keys.
    static func stableHash(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01B3
        }
        return hash
    }
}

extension PlanError {
    init(_ message: String, line: Int?) {
        self.message = message
        self.line = line
    }
}
