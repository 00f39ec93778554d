import ArgumentParser
import Foundation
import TollgateClient
import TollgateLedger
import TollgateWire

@main
struct Tollgate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tollgate",
        abstract: "Talk to a Tollgate server: gate decisions, balances and administration.",
        discussion: """
            Exit status: 0 done; 1 tollgated could not be reached or failed; 3 refused by funds or a cap \
            (insufficientFunds, memberCap, groupCap, accountCap, parentCap); 4 refused for another reason \
            (an unknown account, member, product, hold or grant, an invalid argument, a conflict, a limit); \
            64 the command line or a plan file is not valid; 65 apply: grants not issued without --new-grants. \
            The reason is printed; under --json, as JSON on standard output.
            """,
        subcommands: [
            Ping.self, Check.self, Reserve.self, Commit.self, Release.self, ExtendHold.self, SpendCommand.self, BalanceCommand.self,
            AccountCommand.self, MemberCommand.self, GroupCommand.self, GrantCommand.self, RateCommand.self, Apply.self,
            SubscriptionCommand.self, SeatsCommand.self, PlanCommand.self, AlertCommand.self, RechargeCommand.self, EventsCommand.self, JournalCommand.self,
            TokenCommand.self, HealthCommand.self, BackupCommand.self, ListCommand.self, ShowCommand.self, ClusterCommand.self,
        ])

    /// As ArgumentParser's, with two changes: a mistyped command gets a suggestion, and an invalid
    /// value found by a command's run (a TTL, a time, a cap) is shown with that command's usage,
    /// not the top level's.
    static func main() async {
        let arguments = Array(CommandLine.arguments.dropFirst())
        let names = configuration.subcommands.map { $0._commandName }
        if let first = arguments.first, !first.hasPrefix("-"), first != "help", !names.contains(first) {
            let nearest = names.min { editDistance(first, $0) < editDistance(first, $1) }
            var message = "tollgate: unknown command '\(first)'"
            if let nearest, editDistance(first, nearest) <= max(2, first.count / 3) { message += "; did you mean '\(nearest)'?" }
            FileHandle.standardError.write(Data((message + "\n  See 'tollgate --help' for the commands.\n").utf8))
            Foundation.exit(ExitStatus.usage)
        }
        do {
            var command = try parseAsRoot(arguments)
            do {
                if var asyncCommand = command as? AsyncParsableCommand {
                    try await asyncCommand.run()
                } else {
                    try command.run()
                }
            } catch let error as ValidationError {
                // The command's own usage, under its full name (`tollgate grant void`).
                var path: [String] = []
                var level: [ParsableCommand.Type] = configuration.subcommands
                for argument in arguments {
                    guard let next = level.first(where: { $0._commandName == argument }) else { break }
                    path.append(argument)
                    level = next.configuration.subcommands
                }
                let usage = ([ "tollgate" ] + path.dropLast() + [type(of: command).usageString()]).joined(separator: " ")
                FileHandle.standardError.write(Data("Error: \(error.message)\nUsage: \(usage)\n  See 'tollgate \(path.joined(separator: " ")) --help' for more information.\n".utf8))
                Foundation.exit(ExitStatus.usage)
            }
        } catch {
            exit(withError: error)
        }
    }
}

struct Ping: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Check that tollgated answers, and how fast.")
    @OptionGroup var options: GlobalOptions

    func run() async throws {
        try await runCall(options) { client throws(TollgateError) in
            let started = Date()
            try await client.ping()
            let micros = Int(Date().timeIntervalSince(started) * 1_000_000)
            let name = client.serverHello?.serverName ?? "tollgated"
            let identity = client.serverHello?.identity ?? ""
            let role = client.serverHello?.roleName ?? ""
            return Output(
                text: "\(name) answered in \(micros) µs; connected as \(identity) (role \(role))",
                object: ["server": name, "roundTripMicroseconds": micros, "identity": identity, "role": role])
        }
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Would this be allowed now? Holds nothing.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The account id.") var account: String
    @Argument(help: "The product id; its rate prices the request.") var product: String
    @Argument(help: "Units of the product, 1 to 10^12.") var quantity: Int64
    @Option(help: "The member asking (omit for the account as a whole).") var member: String?

    func run() async throws {
        try await runCall(options) { client throws(TollgateError) in
            Output.decision(try await client.check(account: account, member: member, product: product, quantity: quantity))
        }
    }
}

struct Reserve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Hold credits for an action; prints the hold id.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The account id.") var account: String
    @Argument(help: "The product id; its rate prices the request.") var product: String
    @Argument(help: "Units of the product, 1 to 10^12 (or --dimension for a metered product).") var quantity: Int64?
    @Option(name: .customLong("dimension"), help: "A metered product's NAME=QUANTITY, e.g. input=8000 (repeat for each; an estimate or the worst case).")
    var dimensions: [String] = []
    @Option var member: String?
    @Option(help: "How long the hold lives: 30s, 5m, … (default 60s).") var ttl = "60s"
    @Option(help: "Idempotency key (default: a fresh random key).") var key: String?

    func run() async throws {
        let ttlMicroseconds = try TimeParser.duration(ttl)
        let command: Command
        if let metered = try parseDimensions(dimensions, quantity: quantity) {
            command = .reserveMetered(MeteredRequest(account: account, member: member, product: product, dimensions: metered), ttlMicroseconds: ttlMicroseconds)
        } else {
            command = .reserve(TollgateLedger.Reserve(DecisionRequest(account: account, member: member, product: product, quantity: quantity ?? 0), ttlMicroseconds: ttlMicroseconds))
        }
        try await runCall(options) { client throws(TollgateError) in Output.answer(try await client.apply(command, key: key)) }
    }
}

struct Commit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Consume a hold: all of it, or the actual cost.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The account id.") var account: String
    @Argument(help: "The hold id that reserve printed.") var hold: UInt64
    @Option(help: "The actual cost in credits.") var credits: Int64?
    @Option(help: "The actual quantity, priced at the hold's rate.") var quantity: Int64?
    @Option(name: .customLong("dimension"), help: "A metered hold's actual NAME=QUANTITY (repeat for each), priced at the rates of its reserve.")
    var dimensions: [String] = []
    @Flag(help: "Keep the rest held (a partial commit).") var partial = false
    @Option var key: String?

    func run() async throws {
        guard [credits != nil, quantity != nil, !dimensions.isEmpty].filter({ $0 }).count <= 1 else {
            throw ValidationError("give one of --credits, --quantity or --dimension")
        }
        let reference = HoldReference(account: account, hold: hold)
        let command: Command
        if !dimensions.isEmpty {
            command = .commitMetered(hold: reference, dimensions: try parseDimensions(dimensions, quantity: nil) ?? [], isFinal: !partial)
        } else {
            let amount: TollgateLedger.Commit.Amount = credits.map { .credits($0) } ?? quantity.map { .quantity($0) } ?? .held
            command = .commit(TollgateLedger.Commit(reference, amount: amount, isFinal: !partial))
        }
        try await runCall(options) { client throws(TollgateError) in Output.answer(try await client.apply(command, key: key)) }
    }
}

struct Release: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Give a hold's credits back.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The account id.") var account: String
    @Argument(help: "The hold id that reserve printed.") var hold: UInt64
    @Option var key: String?

    func run() async throws {
        try await runCall(options) { client throws(TollgateError) in
            Output.answer(try await client.apply(.release(HoldReference(account: account, hold: hold)), key: key))
        }
    }
}

struct ExtendHold: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "extend", abstract: "Renew a hold's deadline from now.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The account id.") var account: String
    @Argument(help: "The hold id that reserve printed.") var hold: UInt64
    @Option(help: "New time to live from now: 30s, 5m, …") var ttl: String
    @Option var key: String?

    func run() async throws {
        let ttlMicroseconds = try TimeParser.duration(ttl)
        try await runCall(options) { client throws(TollgateError) in
            Output.answer(try await client.apply(.extend(Extend(HoldReference(account: account, hold: hold), ttlMicroseconds: ttlMicroseconds)), key: key))
        }
    }
}

struct SpendCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "spend", abstract: "Reserve and commit in one step.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The account id.") var account: String
    @Argument(help: "The product id; its rate prices the request.") var product: String
    @Argument(help: "Units of the product, 1 to 10^12 (or --dimension for a metered product).") var quantity: Int64?
    @Option(name: .customLong("dimension"), help: "A metered product's NAME=QUANTITY, e.g. output=300 (repeat for each).")
    var dimensions: [String] = []
    @Option var member: String?
    @Option var key: String?

    func run() async throws {
        let command: Command
        if let metered = try parseDimensions(dimensions, quantity: quantity) {
            command = .spendMetered(MeteredRequest(account: account, member: member, product: product, dimensions: metered))
        } else {
            command = .spend(Spend(DecisionRequest(account: account, member: member, product: product, quantity: quantity ?? 0)))
        }
        try await runCall(options) { client throws(TollgateError) in Output.answer(try await client.apply(command, key: key)) }
    }
}

struct BalanceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "balance", abstract: "Balances, caps and headroom of an account or a member.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The account id.") var account: String
    @Option var member: String?
    @Option(help: "The balance as it was at a past time: 2026-11-01T00:00:00Z, or a duration ago such as 2h.") var at: String?

    func run() async throws {
        var instant: Instant?
        if let at {
            let now = Instant(microsecondsSinceEpoch: Int64(Date().timeIntervalSince1970 * 1_000_000))
            if let ago = try? TimeParser.duration(at) {
                instant = now.adding(microseconds: -ago)
            } else {
                instant = try TimeParser.instant(at)
            }
        }
        try await runCall(options) { client throws(TollgateError) in
            Output.balance(try await client.balance(account: account, member: member, at: instant))
        }
    }
}

/// Runs one admin command and prints its answer.
func admin(_ options: GlobalOptions, _ command: Command, key: String? = nil) async throws {
    try await runCall(options) { client throws(TollgateError) in
        Output.answer(try await client.apply(command, key: key))
    }
}

struct AccountCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "account", abstract: "Create and change accounts.",
        subcommands: [Create.self, SetParent.self, SetOverage.self, SetCap.self, SetConcurrency.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an account (monthly period from now).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Option(help: "Parent account, whose pool this one may draw on.") var parent: String?
        @Option(help: "deny, overdraft:LIMIT or finish:PERCENT.") var overage = "deny"

        func run() async throws {
            try await admin(options, .createAccount(CreateAccount(account: account, parent: parent, overage: try parseOverage(overage))))
        }
    }

    struct SetParent: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set-parent", abstract: "Put the account under a parent (--parent), or detach it; refused while it has open holds.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Option(help: "The new parent; omit to detach.") var parent: String?

        func run() async throws { try await admin(options, .setParent(account: account, parent: parent)) }
    }

    struct SetOverage: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set-overage", abstract: "What happens when funds run out: deny, overdraft:LIMIT or finish:PERCENT.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "deny, overdraft:LIMIT or finish:PERCENT.") var policy: String

        func run() async throws { try await admin(options, .setOverage(account: account, policy: try parseOverage(policy))) }
    }

    struct SetCap: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-cap", abstract: "A cap of the account over its billing period or another window, hard or soft (a child's cap at its parent).")
        @OptionGroup var options: GlobalOptions
        @OptionGroup var window: CapWindowOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "Credits per window, or none to remove the cap.") var limit: String

        func run() async throws { try await admin(options, try window.command(account: account, target: .account, limit: try parseLimit(limit))) }
    }

    struct SetConcurrency: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-concurrency", abstract: "The most holds the account (or, with --each-member, each of its members) may have open at once.")
        @OptionGroup var options: GlobalOptions
        @Flag(name: .long, help: "Bound each member's open holds instead of the account's total (a member's own bound comes first).")
        var eachMember = false
        @Argument(help: "The account id.") var account: String
        @Argument(help: "Open holds, or none to remove the bound.") var limit: String

        func run() async throws {
            try await admin(options, .setConcurrency(account: account, target: eachMember ? .eachMember : .account, limit: try parseLimit(limit)))
        }
    }
}

/// `--per WINDOW` and `--soft`, shared by the set-cap commands.
struct CapWindowOptions: ParsableArguments {
    @Option(name: .long, help: "The window the cap counts over: period (the billing period, the default), minute, hour or day (UTC).")
    var per = "period"
    @Flag(name: .long, help: "A soft cap: never refuses, fires a softLimit event each time the window's use goes past it.")
    var soft = false

    func command(account: String, target: CapTarget, limit: Credits?) throws -> Command {
        guard let window = CapWindow(name: per) else {
            throw ValidationError("--per must be period, minute, hour or day, not \(per)")
        }
        if window == .period, !soft {
            switch target {
            case .account: return .setAccountCap(account: account, limit: limit)
            case .member(let member): return .setMemberCap(account: account, member: member, limit: limit)
            case .group(let group): return .setGroupCap(account: account, group: group, limit: limit)
            }
        }
        return .setCap(SetCap(account: account, target: target, window: window, mode: soft ? .soft : .hard, limit: limit))
    }
}

struct MemberCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "member", abstract: "Add, remove and cap members.", subcommands: [Add.self, Remove.self, SetCap.self, SetConcurrency.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a member to the account.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The member id.") var member: String
        func run() async throws { try await admin(options, .addMember(account: account, member: member)) }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a member (refused while it has open holds); its grants are voided.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The member id.") var member: String
        func run() async throws { try await admin(options, .removeMember(account: account, member: member)) }
    }

    struct SetCap: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set-cap", abstract: "A cap of the member over the billing period or another window, hard or soft.")
        @OptionGroup var options: GlobalOptions
        @OptionGroup var window: CapWindowOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The member id.") var member: String
        @Argument(help: "Credits per window, or none to remove the cap.") var limit: String
        func run() async throws { try await admin(options, try window.command(account: account, target: .member(member), limit: try parseLimit(limit))) }
    }

    struct SetConcurrency: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-concurrency", abstract: "The most holds this member may have open at once (before the account's bound for each member).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The member id.") var member: String
        @Argument(help: "Open holds, or none to remove the member's own bound.") var limit: String
        func run() async throws { try await admin(options, .setConcurrency(account: account, target: .member(member), limit: try parseLimit(limit))) }
    }
}

struct GroupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "group", abstract: "Groups, their caps and their members.", subcommands: [Create.self, Delete.self, SetCap.self, Add.self, Remove.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a group in the account; it starts at 0 consumed.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The group id.") var group: String
        func run() async throws { try await admin(options, .createGroup(account: account, group: group)) }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a group; its open holds still resolve.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The group id.") var group: String
        func run() async throws { try await admin(options, .deleteGroup(account: account, group: group)) }
    }

    struct SetCap: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-cap", abstract: "A cap of the group over the billing period or another window, hard or soft, over what its members decide while in it.")
        @OptionGroup var options: GlobalOptions
        @OptionGroup var window: CapWindowOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The group id.") var group: String
        @Argument(help: "Credits per window, or none to remove the cap.") var limit: String
        func run() async throws { try await admin(options, try window.command(account: account, target: .group(group), limit: try parseLimit(limit))) }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a member to the group: its decisions from now on count against the group.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The group id.") var group: String
        @Argument(help: "The member id.") var member: String
        func run() async throws { try await admin(options, .addToGroup(account: account, group: group, member: member)) }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a member from the group: what it spent in the group stays counted.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The group id.") var group: String
        @Argument(help: "The member id.") var member: String
        func run() async throws { try await admin(options, .removeFromGroup(account: account, group: group, member: member)) }
    }
}

struct GrantCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "grant", abstract: "Add and void grants of credits.", subcommands: [Add.self, Void.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a grant; prints its id.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "Credits to grant, 1 to 10^12.") var amount: Int64
        @Option(help: "Scope the grant to one member (default: the account's pool).") var member: String?
        @Option(help: "Lower is drawn first (default 0).") var priority: Int32 = 0
        @Option(help: "When it takes effect: now, a time, or a duration from now.") var effective = "now"
        @Option(help: "When it expires: never, a time, or a duration from now such as 365d.") var expires = "never"
        @Option(help: "recurring, top-up, promotional or manual.") var source = "manual"
        @Option(name: .customLong("product"), help: "Usable only for this product (repeat for several; default: any product).")
        var products: [String] = []
        @Option var key: String?

        func run() async throws {
            let sources = ["recurring": GrantSource.recurring, "top-up": .topUp, "promotional": .promotional, "manual": .manual]
            guard let grantSource = sources[source] else { throw ValidationError("source must be one of \(sources.keys.sorted().joined(separator: ", "))") }
            let grant = AddGrant(
                account: account, scope: member.map { .member($0) } ?? .pool, amount: amount, priority: priority,
                effectiveAt: try TimeParser.instant(effective), expiresAt: try TimeParser.instant(expires), source: grantSource, products: products)
            try await admin(options, .addGrant(grant), key: key)
        }
    }

    struct Void: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Void what is left available of a grant (credits held on it stay held).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The grant id that grant add printed (see balance).") var grant: UInt64
        func run() async throws { try await admin(options, .voidGrant(account: account, grant: grant)) }
    }
}

struct RateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rate", abstract: "Set the rate card, or an account's own rate.", subcommands: [Set.self, SetMetered.self])

    struct SetMetered: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-metered", abstract: "A metered product's rate for one dimension: credits per 1, 1000 or 1000000 units (e.g. tokens).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The product id, e.g. a model.") var product: String
        @Argument(help: "The dimension, e.g. input, output or cached.") var dimension: String
        @Argument(help: "Credits per --per units.") var credits: Int64
        @Option(help: "The units the credits are for: 1, 1000 or 1000000 (default 1).") var per: Int64 = 1
        @Option(help: "When it takes effect: now, a time, or a duration from now.") var effective = "now"

        func run() async throws {
            guard MeteredRate.pers.contains(per) else { throw ValidationError("--per must be 1, 1000 or 1000000, not \(per)") }
            try await admin(
                options, .setMeteredRate(product: product, dimension: dimension, rate: MeteredRate(credits: credits, per: per), effectiveAt: try TimeParser.instant(effective)))
        }
    }

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Credits per unit of a product, from a given time (default now).")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The product id; its rate prices the request.") var product: String
        @Argument(help: "Credits per unit; with --account, none withdraws the override.") var credits: String
        @Option(help: "Override the rate for one account only.") var account: String?
        @Option(help: "When it takes effect: now, a time, or a duration from now.") var effective = "now"

        func run() async throws {
            let effectiveAt = try TimeParser.instant(effective)
            if let account {
                try await admin(options, .setAccountRate(account: account, product: product, creditsPerUnit: try parseLimit(credits), effectiveAt: effectiveAt))
            } else {
                guard let rate = Int64(credits) else { throw ValidationError("credits per unit must be a whole number") }
                try await admin(options, .setRate(product: product, creditsPerUnit: rate, effectiveAt: effectiveAt))
            }
        }
    }
}

/// Levenshtein distance, for suggesting the command a typo meant.
func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    guard !a.isEmpty else { return b.count }
    guard !b.isEmpty else { return a.count }
    var previous = Array(0...b.count)
    for i in 1...a.count {
        var current = [i] + [Int](repeating: 0, count: b.count)
        for j in 1...b.count {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return previous[b.count]
}
