import ArgumentParser
import Foundation
import TollgateClient
import TollgateLedger

/// `tollgate alert set|remove`, `tollgate recharge set|off` and `tollgate events`.
struct AlertCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "alert", abstract: "Balance alerts: fire once when the balance falls to a threshold, re-arm when it rises.",
        subcommands: [Set.self, Remove.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add or replace an alert.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The alert's id within the account.") var id: String
        @Option(help: "Fire at or below this many credits.") var credits: Int64?
        @Option(help: "Fire at or below this percentage of the period's allotment.") var percent: Int64?
        @Flag(help: "Fire when nothing is left.") var depleted = false
        @Option(help: "Watch this member's own credits instead of the account.") var member: String?

        func run() async throws {
            let threshold: AlertRule.Threshold
            switch (credits, percent, depleted) {
            case (let credits?, nil, false): threshold = .credits(credits)
            case (nil, let percent?, false): threshold = .percentOfAllotment(percent)
            case (nil, nil, true): threshold = .depleted
            default: throw ValidationError("give exactly one of --credits, --percent and --depleted")
            }
            try await admin(options, .setAlert(account: account, rule: AlertRule(id: id, member: member, threshold: threshold)))
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove an alert.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Argument(help: "The alert's id.") var id: String

        func run() async throws { try await admin(options, .removeAlert(account: account, id: id)) }
    }
}

struct RechargeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "recharge", abstract: "Auto-recharge: add a top-up when the account runs low, at most so many times a period.",
        subcommands: [Set.self, Off.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set the account's auto-recharge.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String
        @Option(help: "Recharge when the balance falls below this.") var below: Int64
        @Option(help: "Credits to add (with --up-to: the most to add).") var amount: Int64
        @Option(help: "Add what brings the balance back up to this, at most --amount.") var upTo: Int64?
        @Option(help: "At most this many recharges per billing period.") var maxPerPeriod: Int64 = 1
        @Option(help: "Draw priority of the top-ups (default 100: after included credits).") var priority: Int32 = 100
        @Option(help: "How long each top-up lasts, such as 30d (default: never expires).") var expiresAfter: String?

        func run() async throws {
            let lifetime = try expiresAfter.map { try TimeParser.duration($0) }
            try await admin(
                options,
                .setAutoRecharge(
                    account: account,
                    rule: AutoRecharge(below: below, amount: amount, upTo: upTo, maxPerPeriod: maxPerPeriod, priority: priority, expiresAfterMicroseconds: lifetime)))
        }
    }

    struct Off: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Turn the account's auto-recharge off.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The account id.") var account: String

        func run() async throws { try await admin(options, .setAutoRecharge(account: account, rule: nil)) }
    }
}

struct EventsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "events", abstract: "Print alerts and recharges as they happen (one line each; --json for JSON lines).")
    @OptionGroup var options: GlobalOptions
    @Option(help: "Start after this event number (the server keeps the latest 10,000).") var after: UInt64?
    @Option(help: "Only this account's events.") var account: String?
    @Option(help: "Stop after this many events.") var count: Int?

    func run() async throws {
        let client = try await options.connect()
        let stream: AsyncStream<LedgerEvent>
        do {
            stream = try await client.subscribe(after: after, account: account).events
        } catch {
            await client.close()
            options.fail("cannot subscribe: \(error)", status: error.status)
            throw ExitCode(ExitStatus.failed)
        }
        var seen = 0
        for await event in stream {
            if options.json {
                let data = (try? JSONSerialization.data(withJSONObject: EventsCommand.object(event), options: [.sortedKeys])) ?? Data()
                print(String(decoding: data, as: UTF8.self))
            } else {
                print(EventsCommand.text(event))
            }
            fflush(nil)
            seen += 1
            if let count, seen >= count { break }
        }
        await client.close()
    }

    static func text(_ event: LedgerEvent) -> String {
        let who = event.member.map { "\(event.account)/\($0)" } ?? event.account
        switch event.kind {
        case .alert(let id, let threshold, let balance):
            return "#\(event.sequence) \(event.at) alert \(id): \(who) at \(balance) credits (threshold \(threshold))"
        case .depleted(let id, let balance):
            return "#\(event.sequence) \(event.at) depleted \(id): \(who) at \(balance) credits"
        case .recharged(let grant, let amount, let balance):
            return "#\(event.sequence) \(event.at) recharged \(who): +\(amount) credits (grant \(grant)), balance \(balance)"
        case .softLimit(let level, let subject, let window, let limit, let used):
            return "#\(event.sequence) \(event.at) soft limit: \(level.name) \(subject) of \(event.account) used \(used) credits this \(window.name) (soft cap \(limit))"
        }
    }

    static func object(_ event: LedgerEvent) -> [String: Any] {
        var object: [String: Any] = [
            "sequence": event.sequence, "at": event.at.description, "account": event.account, "member": event.member as Any? ?? NSNull(),
        ]
        switch event.kind {
        case .alert(let id, let threshold, let balance):
            object.merge(["type": "alert", "alert": id, "threshold": threshold, "balance": balance]) { $1 }
        case .depleted(let id, let balance):
            object.merge(["type": "depleted", "alert": id, "balance": balance]) { $1 }
        case .recharged(let grant, let amount, let balance):
            object.merge(["type": "recharged", "grant": grant, "amount": amount, "balance": balance]) { $1 }
        case .softLimit(let level, let subject, let window, let limit, let used):
            object.merge(["type": "softLimit", "level": level.name, "subject": subject, "window": window.name, "limit": limit, "used": used]) { $1 }
        }
        return object
    }
}
