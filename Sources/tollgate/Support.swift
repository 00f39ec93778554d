import ArgumentParser
import Foundation
import TollgateClient
import TollgateLedger
import TollgateServer
import TollgateWire

/// Options every subcommand takes.
struct GlobalOptions: ParsableArguments {
    @Option(help: "tollgated's gate port as HOST:PORT (also TOLLGATE_SERVER; default 127.0.0.1:7400).")
    var server: String?

    @Flag(help: "Print JSON instead of text, for scripts.")
    var json = false

    @Option(help: "Deadline of each call in milliseconds.")
    var timeoutMs: Int64 = 5_000

    @Option(help: "Token sent in HELLO (also TOLLGATE_TOKEN). Prefer --token-file: a flag shows in `ps`.")
    var token: String?

    @Option(help: "File holding the token (also TOLLGATE_TOKEN_FILE; default ./tollgate-data/admin.token when it exists).")
    var tokenFile: String?

    @Flag(help: "Speak TLS, trusting the system's CAs (implied by --tls-ca, --tls-cert; also TOLLGATE_TLS=1).")
    var tls = false

    @Option(help: "PEM bundle of the CAs the server's certificate must chain to (also TOLLGATE_TLS_CA).")
    var tlsCa: String?

    @Option(help: "PEM client certificate for mTLS (also TOLLGATE_TLS_CERT).")
    var tlsCert: String?

    @Option(help: "PEM private key of --tls-cert (also TOLLGATE_TLS_KEY).")
    var tlsKey: String?

    @Option(help: "Name the server's certificate must carry, when it is not the host in --server (also TOLLGATE_TLS_SERVER_NAME).")
    var tlsServerName: String?

    func connect() async throws -> TollgateClient {
        let environment = ProcessInfo.processInfo.environment
        let address = server ?? environment["TOLLGATE_SERVER"] ?? "127.0.0.1:7400"
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]) else {
            throw ValidationError("--server must be HOST:PORT, not \"\(address)\"")
        }
        var host = String(address[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        let ca = tlsCa ?? environment["TOLLGATE_TLS_CA"]
        let certificate = tlsCert ?? environment["TOLLGATE_TLS_CERT"]
        let key = tlsKey ?? environment["TOLLGATE_TLS_KEY"]
        let serverName = tlsServerName ?? environment["TOLLGATE_TLS_SERVER_NAME"]
        let wantsTLS = tls || environment["TOLLGATE_TLS"] == "1" || ca != nil || certificate != nil || key != nil || serverName != nil
        let tlsOptions = wantsTLS ? TLSOptions(caFile: ca, certificateFile: certificate, keyFile: key, serverName: serverName) : nil
        let configuration = TollgateClient.Configuration(
            host: host, port: port, clientName: "tollgate-cli", token: try resolvedToken(environment), requestTimeoutMilliseconds: timeoutMs,
            tls: tlsOptions)
        do {
            return try await TollgateClient.connect(configuration)
        } catch {
            let message: String
            switch error {
            case .connection(let reason), .tls(let reason):
                message = "cannot connect to \(address) — is tollgated running? (\(reason))"
            case .timeout:
                message = "cannot connect to \(address): no answer within \(timeoutMs) ms — is tollgated running there?"
            case .server(let wire) where wire.status == .unauthorized:
                message = configuration.token.isEmpty
                    ? "tollgated at \(address) wants a token and none was sent: pass --token-file, or set TOLLGATE_TOKEN_FILE (a server without a credentials file keeps its admin token in <data-dir>/admin.token)"
                    : "tollgated at \(address) did not accept the token: \(wire.message)"
            default:
                message = "cannot talk to tollgated at \(address): \(error)"
            }
            fail(message, status: error.status)
            throw ExitCode(ExitStatus.failed)
        }
    }

    /// Reports a failure: as JSON on standard output under --json, else on standard error.
    func fail(_ message: String, status: UInt16? = nil) {
        if json {
            print(Output.json(["error": message, "status": status.map { Int($0) } as Any]))
        } else {
            FileHandle.standardError.write(Data("tollgate: \(message)\n".utf8))
        }
    }

    /// The token: --token, TOLLGATE_TOKEN, --token-file, TOLLGATE_TOKEN_FILE, then a local
    /// server's admin token in ./tollgate-data if it is there; else none.
    func resolvedToken(_ environment: [String: String]) throws -> String {
        if let token = token ?? environment["TOLLGATE_TOKEN"] { return token }
        if let file = tokenFile ?? environment["TOLLGATE_TOKEN_FILE"] {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw ValidationError("cannot read the token file \(file)")
            }
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        if let text = try? String(contentsOfFile: "tollgate-data/admin.token", encoding: .utf8) {
            return text.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        return ""
    }
}

enum CLIError: Error, CustomStringConvertible {
    case failed(String)

    var description: String {
        switch self {
        case .failed(let message): message
        }
    }
}

/// The CLI's exit statuses (also in `tollgate --help` and the README).
enum ExitStatus {
    static let ok: Int32 = 0
    /// tollgated could not be reached, or failed (a protocol error, a timeout, unavailable).
    static let failed: Int32 = 1
    /// Refused by funds or a cap: insufficientFunds, memberCap, groupCap, accountCap, parentCap.
    static let outOfCredits: Int32 = 3
    /// Refused for any other reason: an unknown account, member, product, hold or grant, an
    /// invalid argument, a conflict, a limit.
    static let refused: Int32 = 4
    /// The command line or a plan file is not valid (ArgumentParser's usage status).
    static let usage: Int32 = 64
    /// `apply`: grants not issued without --new-grants; nothing was sent.
    static let grantsNotIssued: Int32 = 65

    static func of(_ code: LedgerError.Code) -> Int32 {
        switch code {
        case .insufficientFunds, .memberCap, .groupCap, .accountCap, .parentCap: outOfCredits
        default: refused
        }
    }
}

/// Runs a call, prints its result as text or JSON, and turns a refusal into exit status 3 (funds
/// or caps) or 4 (anything else).
func runCall(_ options: GlobalOptions, _ body: (TollgateClient) async throws(TollgateError) -> Output) async throws {
    let client = try await options.connect()
    defer { Task { await client.close() } }
    do {
        let output = try await body(client)
        print(options.json ? output.json : output.text)
        await client.close()
    } catch {
        await client.close()
        switch error {
        case .refused(let refusal):
            let output = Output.refusal(refusal)
            print(options.json ? output.json : output.text)
            throw ExitCode(ExitStatus.of(refusal.error.code))
        default:
            options.fail("\(error)", status: error.status)
            throw ExitCode(ExitStatus.failed)
        }
    }
}

/// A result with both renderings.
struct Output {
    var text: String
    var object: Any

    var json: String { Output.json(object) }

    static func json(_ object: Any) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]) else {
            return "{}"
        }
        return String(decoding: data, as: UTF8.self)
    }

    static func headroom(_ headroom: Headroom) -> (String, [String: Any]) {
        var parts = ["funds \(headroom.funds)"]
        if let member = headroom.member { parts.append("member \(member)") }
        if let group = headroom.group { parts.append("group \(headroom.groupID ?? "") \(group)") }
        if let account = headroom.account { parts.append("account \(account)") }
        if let parent = headroom.parent { parts.append("parent \(parent)") }
        return ("headroom: " + parts.joined(separator: ", "), LedgerJSON.headroom(headroom))
    }

    static func decision(_ decision: Decision) -> Output {
        let (headroomText, headroomObject) = headroom(decision.headroom)
        var object: [String: Any] = ["outcome": "allowed", "cost": decision.cost, "creditsPerUnit": decision.creditsPerUnit, "headroom": headroomObject]
        var text = "allowed: cost \(decision.cost) credits"
        if let hold = decision.hold {
            object["hold"] = hold
            text += ", hold \(hold)"
        }
        if let deadline = decision.deadline {
            object["deadline"] = deadline.description
            text += " until \(deadline)"
        }
        return Output(text: text + "\n" + headroomText, object: object)
    }

    static func refusal(_ refusal: Refusal) -> Output {
        var object: [String: Any] = [
            "outcome": "refused", "status": Int(refusal.error.code.rawValue), "reason": refusal.error.code.identifier,
            "level": refusal.error.level.name, "subject": refusal.error.subject,
        ]
        var text = "refused: \(refusal.error)"
        if let value = refusal.headroom {
            let (headroomText, headroomObject) = headroom(value)
            object["headroom"] = headroomObject
            text += "\n" + headroomText
        }
        return Output(text: text, object: object)
    }

    static func answer(_ answer: Answer) -> Output {
        switch answer {
        case .decision(let decision):
            return Output.decision(decision)
        case .committed(let result):
            let (headroomText, headroomObject) = headroom(result.headroom)
            return Output(
                text: "committed \(result.committed) credits on hold \(result.hold); returned \(result.returned); still held \(result.stillHeld)\n\(headroomText)",
                object: ["outcome": "committed", "hold": result.hold, "committed": result.committed, "returned": result.returned, "stillHeld": result.stillHeld, "headroom": headroomObject])
        case .released(let result):
            let (headroomText, headroomObject) = headroom(result.headroom)
            return Output(
                text: "released \(result.released) credits of hold \(result.hold)\n\(headroomText)",
                object: ["outcome": "released", "hold": result.hold, "released": result.released, "headroom": headroomObject])
        case .extended(let result):
            return Output(
                text: "hold \(result.hold) now expires \(result.deadline)",
                object: ["outcome": "extended", "hold": result.hold, "deadline": result.deadline.description])
        case .grantAdded(let id):
            return Output(text: "grant \(id) added", object: ["outcome": "done", "grant": id])
        case .done:
            return Output(text: "done", object: ["outcome": "done"])
        case .refused(let refusal):
            return Output.refusal(refusal)
        }
    }

    static func balance(_ balance: Balance) -> Output {
        var lines = ["\(balance.member.map { "\(balance.account) / \($0)" } ?? balance.account) at \(balance.at)"]
        lines.append("period \(balance.periodStart) to \(balance.periodEnd)")
        let funds = balance.funds
        lines.append(
            "available: \(funds.member + funds.pool + funds.parentPool) (member \(funds.member), pool \(funds.pool), parent pool \(funds.parentPool)); overdrawn \(funds.overdrawn); balance \(funds.balance)")
        for level in balance.levels {
            let limit = level.limit.map { " of cap \($0)" } ?? ""
            lines.append("  \(level.level.name) \(level.subject): consumed \(level.consumed), held \(level.held)\(limit)")
            for cap in level.caps where !(cap.window == .period && cap.mode == .hard) {
                lines.append("    \(cap.mode == .soft ? "soft cap" : "cap") per \(cap.window.name): used \(cap.used) of \(cap.limit), window ends \(cap.windowEnd)")
            }
        }
        lines.append(headroom(balance.headroom).0)
        lines.append("open holds: \(balance.openHolds)\(balance.openHoldsLimit.map { " of at most \($0)" } ?? "")")
        lines.append("burn: \(balance.burn.lastMinute) credits in the last minute, \(balance.burn.lastHour) in the last hour")
        if let view = balance.subscription {
            let terms = view.terms
            let scope = terms.scope == .pooled ? "pooled" : "per member"
            var line = "subscription: \(view.seats) seats × \(terms.creditsPerSeat) credits (\(scope)) for \(view.periodStart) to \(view.periodEnd)"
            if terms.rolloverCap > 0 { line += "; rollover up to \(terms.rolloverCap)" }
            if let pending = view.pendingSeats { line += "; \(pending.seats) seats from \(pending.at)" }
            switch view.nextTerms {
            case .some(.none): line += "; ends at \(view.periodEnd)"
            case .some(.some(let next)): line += "; \(next.creditsPerSeat) credits per seat from \(view.periodEnd)"
            case .none: break
            }
            lines.append(line)
        }
        for grant in balance.grants {
            let scope: String
            if case .member(let member) = grant.scope { scope = "member \(member)" } else { scope = "pool" }
            let products = grant.products.isEmpty ? "" : ", for \(grant.products.joined(separator: ", ")) only"
            lines.append(
                "  grant \(grant.id) [\(scope), priority \(grant.priority), expires \(grant.expiresAt)\(products)]: \(grant.available) of \(grant.amount) available, \(grant.held) held, \(grant.consumed) consumed")
        }
        return Output(text: lines.joined(separator: "\n"), object: LedgerJSON.balance(balance))
    }
}

/// Times on the command line: `now`, an ISO 8601 UTC time (`2026-12-31T23:59:59Z` or
/// `2026-12-31`), or a duration from now (`90s`, `30m`, `12h`, `30d`, `1y`); `never` for no
/// expiry.
enum TimeParser {
    static func instant(_ text: String, now: Instant = Instant(microsecondsSinceEpoch: Int64(Date().timeIntervalSince1970 * 1_000_000))) throws -> Instant {
        let lowered = text.lowercased()
        if lowered == "now" { return now }
        if lowered == "never" { return .distantFuture }
        if let unit = lowered.last, let amount = Int64(lowered.dropLast()) {
            let perUnit: Int64?
            switch unit {
            case "s": perUnit = Microseconds.perSecond
            case "m": perUnit = Microseconds.perMinute
            case "h": perUnit = Microseconds.perHour
            case "d": perUnit = Microseconds.perDay
            case "y": perUnit = 365 * Microseconds.perDay
            default: perUnit = nil
            }
            if let perUnit {
                // Out of range is an error, not a trap: "9999999999999d".
                let (microseconds, overflow) = amount.multipliedReportingOverflow(by: perUnit)
                let (_, past) = now.microsecondsSinceEpoch.addingReportingOverflow(microseconds)
                guard !overflow, !past else { throw ValidationError("\"\(text)\" is out of range") }
                return now.adding(microseconds: microseconds)
            }
        }
        let digits = text.split(whereSeparator: { "-T:Z".contains($0) }).map { Int64($0) }
        if digits.count >= 3, digits.allSatisfy({ $0 != nil }) {
            let parts = digits.map { $0! } + [0, 0, 0]
            let civil = CivilTime(year: parts[0], month: parts[1], day: parts[2], hour: parts[3], minute: parts[4], second: parts[5])
            if (1...12).contains(civil.month), (1...31).contains(civil.day) { return civil.instant }
        }
        throw ValidationError("\"\(text)\" is not a time: use now, never, 2026-12-31T23:59:59Z, or a duration such as 30d")
    }

    static func duration(_ text: String) throws -> Int64 {
        let zero = Instant(microsecondsSinceEpoch: 0)
        let problem = ValidationError("\"\(text)\" is not a duration: a whole number of s, m, h, d or y, such as 30s, 5m or 2h")
        guard let unit = text.last, "smhdy".contains(unit), Int64(text.dropLast()) != nil else { throw problem }
        let instant = try instant(text, now: zero)
        guard instant > zero, instant != .distantFuture else { throw problem }
        return instant.microsecondsSinceEpoch
    }
}

/// `deny`, `overdraft:LIMIT` or `finish:PERCENT`.
func parseOverage(_ text: String) throws -> OveragePolicy {
    let parts = text.split(separator: ":")
    switch (parts.first.map(String.init), parts.count > 1 ? Int64(parts[1]) : nil) {
    case ("deny", _) where parts.count == 1: return .deny
    case ("overdraft", .some(let limit)): return .overdraft(limit: limit)
    case ("finish", .some(let percent)): return .finish(percent: percent)
    default: throw ValidationError("overage must be deny, overdraft:LIMIT or finish:PERCENT, not \"\(text)\"")
    }
}

/// A cap: a number of credits, or `none`.
/// `--dimension NAME=QUANTITY` options as a metered request's dimensions; nil when there are
/// none (then `quantity` is required), and an error when both or neither are given.
func parseDimensions(_ options: [String], quantity: Int64?) throws -> [DimensionQuantity]? {
    if options.isEmpty {
        guard quantity != nil else { throw ValidationError("give a quantity, or --dimension NAME=QUANTITY for a metered product") }
        return nil
    }
    guard quantity == nil else { throw ValidationError("give a quantity or --dimension, not both") }
    return try options.map { option in
        let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, let value = Int64(parts[1]) else {
            throw ValidationError("--dimension takes NAME=QUANTITY, such as input=8000, not \"\(option)\"")
        }
        return DimensionQuantity(parts[0], value)
    }
}

func parseLimit(_ text: String) throws -> Credits? {
    if text.lowercased() == "none" { return nil }
    guard let limit = Int64(text) else { throw ValidationError("a cap is a number of credits or none, not \"\(text)\"") }
    return limit
}

/// JSON for an optional: the value, or null.
func nullable(_ value: Any?) -> Any {
    LedgerJSON.nullable(value)
}

/// Progress of long work, on standard error when that is a terminal: after the first second,
/// one line rewritten in place every second ("tollgate: 48,000 records, 24,000/s, 2 s"), erased
/// when the work is done. Nothing at all when standard error is a file or a pipe, or when
/// `quiet` (a command whose output goes to the same terminal).
struct TerminalProgress {
    private var meter: ProgressMeter?

    init(unit: String, total: Int? = nil, quiet: Bool = false) {
        guard !quiet, isatty(2) == 1 else { return }
        meter = ProgressMeter(every: .seconds(1), total: total) { report in
            FileHandle.standardError.write(Data("\r\u{1B}[Ktollgate: \(report.line(unit: unit))".utf8))
        }
    }

    mutating func advance(by count: Int = 1) {
        meter?.advance(by: count)
    }

    func finish() {
        if meter?.reported == true { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }

    /// Whether standard output is a terminal: commands that print as they go keep quiet then.
    static var outputIsTerminal: Bool { isatty(1) == 1 }
}
