import ArgumentParser
import TollgateClient
import TollgateLedger

/// `tollgate subscription set|end ACCOUNT` and `tollgate seats ACCOUNT N`.
struct SubscriptionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "subscription", abstract: "Seat subscriptions: included credits every billing period.",
        subcommands: [Set.self, End.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a subscription now (this period's credits are issued at once), or change its terms from the next period.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Option(help: "Included credits per seat per period.") var creditsPerSeat: Int64
        @Flag(help: "Every member is a seat with its own credits (default: seats share a pool; set their number with `tollgate seats`).")
        var perMember = false
        @Flag(help: "A seat added mid-period brings its full credits (default: prorated for the rest of the period).")
        var noProrate = false
        @Option(help: "keep (default: nothing clawed back) or claw-back (a removed seat's unused share is voided).") var removal = "keep"
        @Option(help: "Unused included credits carried into the next period, at most (per member when --per-member; default 0).")
        var rolloverCap: Int64 = 0
        @Option(help: "Draw priority of the included credits (lower first; default 0).") var priority: Int32 = 0

        func run() async throws {
            let removalPolicy: Subscription.Removal
            switch removal {
            case "keep": removalPolicy = .keep
            case "claw-back", "clawback": removalPolicy = .clawBack
            default: throw ValidationError("--removal must be keep or claw-back")
            }
            let terms = Subscription(
                scope: perMember ? .perMember : .pooled, creditsPerSeat: creditsPerSeat, prorate: !noProrate, removal: removalPolicy,
                rolloverCap: rolloverCap, priority: priority)
            try await admin(options, .setSubscription(account: account, terms: terms))
        }
    }

    struct End: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "End the subscription at the end of the current period.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String

        func run() async throws { try await admin(options, .setSubscription(account: account, terms: nil)) }
    }
}

struct SeatsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "seats", abstract: "Set a pooled subscription's seat count, now or from a given time.")
    @OptionGroup var options: GlobalOptions
    @Argument(help: "The account id.") var account: String
    @Argument(help: "The seat count, 0 or more.") var seats: Int64
    @Option(help: "When: now, a time, or a duration from now such as 2d.") var effective = "now"

    func run() async throws {
        try await admin(options, .setSeats(account: account, seats: seats, effectiveAt: try TimeParser.instant(effective)))
    }
}

/// `tollgate plan provision ACCOUNT PLAN`: an account on a plan in one step. Plans are defined
/// in plan files (`plans:` in `tollgate apply`).
struct PlanCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan", abstract: "Provision accounts from plan templates (define plans with `tollgate apply`; see examples/plans.yaml).",
        subcommands: [ProvisionAccount.self])

    struct ProvisionAccount: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "provision", abstract: "Create an account on a plan: members, seats, subscription, grants, alerts and recharge, all or nothing.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The plan's name (tollgate plan define, or plans: in a plan file).") var plan: String
        @Option(help: "Seats of a pooled subscription.") var seats: Int64 = 0
        @Option(help: "A member to add (repeat for several; per-member plans give each its seat).") var member: [String] = []
        @Option(help: "A parent account whose pool this one may draw on.") var parent: String?

        func run() async throws {
            try await admin(options, .provision(Provision(account: account, plan: plan, parent: parent, seats: seats, members: member)))
        }
    }
}
