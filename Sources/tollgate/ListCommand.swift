import ArgumentParser
import Foundation

/// How `list` and `show` reach the read API on tollgated's admin port (README, "Watching
/// credits burn down"): a `read` or `admin` token, as for the dashboard.
struct ReadOptions: ParsableArguments {
    @Option(help: "The admin port, HOST:PORT (also TOLLGATE_ADMIN; default 127.0.0.1:7401).") var admin: String?
    @Option(help: "A read or admin token (also TOLLGATE_TOKEN). Prefer --token-file.") var token: String?
    @Option(help: "File holding the token (also TOLLGATE_TOKEN_FILE; default ./tollgate-data/admin.token when it exists).") var tokenFile: String?
    @Flag(help: "Print the read API's JSON instead of text.") var json = false
    @Option(help: "Give up after this many milliseconds.") var timeoutMs = 5_000

    /// GETs a read API path; the decoded JSON object, or exits with the API's error.
    func get(_ path: String) throws -> [String: Any] {
        let environment = ProcessInfo.processInfo.environment
        let address = admin ?? environment["TOLLGATE_ADMIN"] ?? "127.0.0.1:7401"
        guard let colon = address.lastIndex(of: ":"), let port = UInt16(address[address.index(after: colon)...]) else {
            throw ValidationError("--admin must be HOST:PORT, not \"\(address)\"")
        }
        let host = String(address[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        var options = GlobalOptions()
        options.token = token
        options.tokenFile = tokenFile
        let credential = try options.resolvedToken(environment)
        let status: Int
        let body: String
        do {
            (status, body) = try HealthCommand.get(
                host: host, port: port, path: path, timeoutMilliseconds: timeoutMs, authorization: credential.isEmpty ? nil : credential,
                maxBytes: 64 << 20)
        } catch let error as HealthCommand.HealthError {
            report("cannot reach tollgated's admin port at \(address) — is tollgated running with its admin port on? (\(error.message))")
            throw ExitCode(ExitStatus.failed)
        }
        let object = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
        guard status == 200, let object else {
            let message = (object?["error"] as? String) ?? "HTTP \(status)"
            report(message)
            throw ExitCode(status == 404 ? ExitStatus.refused : ExitStatus.failed)
        }
        return object
    }

    func report(_ message: String) {
        if json {
            Swift.print(Output.json(["error": message]))
        } else {
            FileHandle.standardError.write(Data("tollgate: \(message)\n".utf8))
        }
    }

    /// Prints the JSON, or the rows as an aligned table.
    func print(_ object: [String: Any], rows: [[String]], header: [String]) {
        if json {
            Swift.print(Output.json(object))
            return
        }
        guard !rows.isEmpty else {
            Swift.print("(none)")
            return
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        for row in [header] + rows {
            Swift.print(row.enumerated().map { $0.element.padding(toLength: widths[$0.offset], withPad: " ", startingAt: 0) }.joined(separator: "  "))
        }
    }
}

func text(_ value: Any?) -> String {
    switch value {
    case nil, is NSNull: "—"
    case let bool as Bool where !(value is NSNumber) || String(cString: (value as! NSNumber).objCType) == "c": bool ? "yes" : "no"
    case let number as NSNumber: number.stringValue
    case let string as String: string
    case let list as [Any]: list.map { text($0) }.joined(separator: ",")
    default: "\(value!)"
    }
}

func percentEncoded(_ component: String) -> String {
    component.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~"))) ?? component
}

struct ListCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List accounts, members, holds, grants, products or plans (from the admin port's read API).",
        subcommands: [Accounts.self, Members.self, Holds.self, Grants.self, Products.self, Plans.self])

    struct Accounts: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Accounts in creation order, a page at a time.")
        @OptionGroup var options: ReadOptions
        @Option(help: "Start after this account (the `next` of the previous page).") var after: String?
        @Option(help: "At most this many (1 to 1,000).") var limit = 100

        func run() throws {
            var path = "/api/v1/accounts?limit=\(limit)"
            if let after { path += "&after=" + percentEncoded(after) }
            let object = try options.get(path)
            let accounts = object["accounts"] as? [[String: Any]] ?? []
            options.print(
                object,
                rows: accounts.map { a in [text(a["account"]), text(a["parent"]), text(a["members"]), text(a["balance"]), text(a["consumed"]), text(a["openHolds"])] },
                header: ["account", "parent", "members", "balance", "consumed", "open holds"])
            if !options.json, let next = object["next"] as? String { Swift.print("(more: --after \(next))") }
        }
    }

    struct Members: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "An account's members: caps, consumption this period, holds and groups.")
        @OptionGroup var options: ReadOptions
        @Argument(help: "The account id.") var account: String
        @Option(help: "At most this many (1 to 100,000).") var limit = 1_000

        func run() throws {
            let object = try options.get("/api/v1/accounts/\(percentEncoded(account))/members?limit=\(limit)")
            let members = object["members"] as? [[String: Any]] ?? []
            options.print(
                object,
                rows: members.map { m in [text(m["member"]), text(m["cap"]), text(m["consumed"]), text(m["held"]), text(m["available"]), text(m["openHolds"]), text(m["groups"])] },
                header: ["member", "cap", "consumed", "held", "own credits", "open holds", "groups"])
        }
    }

    struct Holds: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "An account's open holds: what each holds and until when.")
        @OptionGroup var options: ReadOptions
        @Argument(help: "The account id.") var account: String
        @Option(help: "At most this many (1 to 100,000).") var limit = 1_000

        func run() throws {
            let object = try options.get("/api/v1/accounts/\(percentEncoded(account))/holds?limit=\(limit)")
            let holds = object["holds"] as? [[String: Any]] ?? []
            options.print(
                object,
                rows: holds.map { h in [text(h["hold"]), text(h["member"]), text(h["product"]), text(h["held"]), text(h["committed"]), text(h["deadline"])] },
                header: ["hold", "member", "product", "held", "committed", "deadline"])
        }
    }

    struct Grants: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Every live grant of an account: pending ones, and expired or voided ones still holding credits, too.")
        @OptionGroup var options: ReadOptions
        @Argument(help: "The account id.") var account: String

        func run() throws {
            let object = try options.get("/api/v1/accounts/\(percentEncoded(account))/grants")
            let grants = object["grants"] as? [[String: Any]] ?? []
            options.print(
                object,
                rows: grants.map { g in
                    [text(g["id"]), text(g["member"]), text(g["source"]), text(g["state"]), text(g["amount"]), text(g["available"]), text(g["held"]),
                     text(g["priority"]), text(g["expiresAt"])]
                },
                header: ["grant", "member", "source", "state", "amount", "available", "held", "priority", "expires"])
        }
    }

    struct Products: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The rate card: each product's credits per unit now, and changes to come.")
        @OptionGroup var options: ReadOptions

        func run() throws {
            let object = try options.get("/api/v1/products")
            let products = object["products"] as? [[String: Any]] ?? []
            options.print(
                object,
                rows: products.map { p in
                    let upcoming = (p["upcoming"] as? [[String: Any]] ?? []).map { "\(text($0["creditsPerUnit"])) from \(text($0["effectiveAt"]))" }
                    return [text(p["product"]), text(p["creditsPerUnit"]), upcoming.isEmpty ? "—" : upcoming.joined(separator: "; ")]
                },
                header: ["product", "credits per unit", "upcoming"])
            let metered = object["metered"] as? [[String: Any]] ?? []
            if !options.json, !metered.isEmpty {
                func rate(_ value: Any?) -> String {
                    guard let rate = value as? [String: Any] else { return "—" }
                    return "\(text(rate["credits"])) per \(text(rate["per"]))"
                }
                Swift.print("")
                options.print(
                    object,
                    rows: metered.map { m in
                        let upcoming = (m["upcoming"] as? [[String: Any]] ?? []).map { "\(rate($0["rate"])) from \(text($0["effectiveAt"]))" }
                        return [text(m["product"]), text(m["dimension"]), rate(m["rate"]), upcoming.isEmpty ? "—" : upcoming.joined(separator: "; ")]
                    },
                    header: ["metered product", "dimension", "credits", "upcoming"])
            }
        }
    }

    struct Plans: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "The plan templates PROVISION uses.")
        @OptionGroup var options: ReadOptions

        func run() throws {
            let object = try options.get("/api/v1/plans")
            let plans = object["plans"] as? [[String: Any]] ?? []
            options.print(
                object,
                rows: plans.map { p in
                    let subscription = (p["subscription"] as? [String: Any]).map { "\(text($0["creditsPerSeat"])) per seat, \(text($0["scope"]))" } ?? "—"
                    let grants = (p["grants"] as? [[String: Any]] ?? []).map { "\(text($0["amount"])) \(text($0["source"]))" }
                    return [text(p["name"]), text((p["overage"] as? [String: Any])?["policy"]), subscription, grants.isEmpty ? "—" : grants.joined(separator: ", "),
                            text((p["alerts"] as? [Any])?.count)]
                },
                header: ["plan", "overage", "subscription", "grants", "alerts"])
        }
    }
}

struct ShowCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "show", abstract: "Show one account at a glance, with its alerts and auto-recharge (from the read API).",
        subcommands: [Account.self])

    struct Account: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "An account: balance, period, caps, holds, alerts and auto-recharge.")
        @OptionGroup var options: ReadOptions
        @Argument(help: "The account id.") var account: String

        func run() throws {
            let object = try options.get("/api/v1/accounts/\(percentEncoded(account))")
            if options.json {
                Swift.print(Output.json(object))
                return
            }
            let a = object["account"] as? [String: Any] ?? [:]
            Swift.print("\(text(a["account"]))\(a["parent"] is String ? " (child of \(text(a["parent"])))" : "")")
            Swift.print("period \(text(a["periodStart"])) to \(text(a["periodEnd"]))")
            Swift.print("balance \(text(a["balance"])) (pool \(text(a["pool"])), members' own \(text(a["membersOwn"]))); allotment \(text(a["allotment"]))")
            Swift.print("consumed \(text(a["consumed"])) of cap \(text(a["cap"])); held \(text(a["held"])) by \(text(a["openHolds"])) open holds")
            Swift.print("members \(text(a["members"])), children \(text(a["children"])), live grants \(text(a["liveGrants"]))")
            for alert in object["alerts"] as? [[String: Any]] ?? [] {
                Swift.print("alert \(text(alert["id"])): \(text((alert["threshold"] as? [String: Any])?["kind"])) — \((alert["firing"] as? Bool) == true ? "firing" : "armed")")
            }
            if let recharge = object["autoRecharge"] as? [String: Any] {
                Swift.print("auto-recharge: \(text(recharge["amount"])) when below \(text(recharge["below"])), used \(text(recharge["usedThisPeriod"])) of \(text(recharge["maxPerPeriod"])) this period")
            }
        }
    }
}
