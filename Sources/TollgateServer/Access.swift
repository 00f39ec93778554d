import Synchronization
import TollgateLedger
import TollgateWire
import Yams

/// What an identity may do. Not a ladder: `read` may read history, which `gate` may not.
public enum Role: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// Balances, current and past.
    case read = 1
    /// Check, reserve, spend, commit, release, extend and current balances: what an agent
    /// runtime needs, and nothing that adds credits or changes an account.
    case gate = 2
    /// Everything.
    case admin = 3

    public var description: String {
        switch self {
        case .read: "read"
        case .gate: "gate"
        case .admin: "admin"
        }
    }

    public init?(name: String) {
        guard let role = Role.allCases.first(where: { $0.description == name }) else { return nil }
        self = role
    }

    /// Whether this role may send a request with this opcode at all (scope aside).
    public func allows(_ opcode: Opcode) -> Bool {
        switch opcode {
        case .hello, .ping, .error, .event: true
        case .balance: true
        case .balanceAt, .subscribe: self == .read || self == .admin
        case .check, .reserve, .spend, .commit, .release, .extend, .batch, .reserveMetered, .spendMetered, .commitMetered: self == .gate || self == .admin
        default: self == .admin
        }
    }
}

/// The accounts an identity may touch: every account, or the named ones and those starting
/// with one of the prefixes.
public struct AccountScope: Hashable, Sendable, CustomStringConvertible {
    public var everything: Bool
    public var accounts: Set<String>
    public var prefixes: [String]

    public static let all = AccountScope(everything: true, accounts: [], prefixes: [])

    public init(everything: Bool = false, accounts: Set<String> = [], prefixes: [String] = []) {
        self.everything = everything
        self.accounts = accounts
        self.prefixes = prefixes
    }

    public func contains(_ account: String) -> Bool {
        everything || accounts.contains(account) || prefixes.contains { account.hasPrefix($0) }
    }

    public var description: String {
        if everything { return "every account" }
        var parts = accounts.sorted()
        parts += prefixes.map { "\($0)*" }
        return parts.joined(separator: ", ")
    }
}

/// An identity the server knows, with its role and scope.
public struct Principal: Hashable, Sendable {
    public enum Source: String, Hashable, Sendable {
        case certificate, token, anonymous
    }

    /// How logs, metrics and the HELLO answer name it. Never a secret.
    public var name: String
    public var role: Role
    public var scope: AccountScope
    public var source: Source

    public init(name: String, role: Role, scope: AccountScope, source: Source) {
        self.name = name
        self.role = role
        self.scope = scope
        self.source = source
    }

    /// Why this principal may not send `request`, or nil if it may. A BATCH is checked item
    /// by item by the caller; here it only needs the role. `parentOf` gives an account's
    /// parent now: a child's cap and its place under the parent are the parent's business,
    /// so changing them needs the parent in scope too.
    public func refusal(_ request: WireRequest, parentOf: (String) -> String? = { _ in nil }) -> WireError? {
        let opcode = request.opcode
        guard role.allows(opcode) else {
            return WireError(.forbidden, "\(name) has the \(role) role, which may not send \(opcode.name)")
        }
        guard !scope.everything else { return nil }
        // Checked without building a list: this runs before every decision of a scoped identity.
        func check(_ account: String) -> WireError? {
            scope.contains(account) ? nil : WireError(.forbidden, "\(name) may not touch account \"\(account)\"")
        }
        switch request {
        case .hello, .ping, .batch: return nil
        case .nodeFiles, .readNodeFile:
            return WireError(.forbidden, "\(name) may touch only \(scope); \(opcode.name) reads the node's files, every account's")
        case .subscribe(_, let account):
            guard let account else {
                return WireError(.forbidden, "\(name) may touch only \(scope); subscribe to one of those accounts")
            }
            return check(account)
        case .check(let decision): return check(decision.account)
        case .balance(let account, _), .balanceAt(let account, _, _), .familyTransfer(let account): return check(account)
        case .command(let command, _):
            switch command {
            case .setRate, .setMeteredRate:
                return WireError(.forbidden, "\(name) may touch only \(scope); \(opcode.name) changes the rate card of every account")
            case .createAccount(let create):
                return check(create.account) ?? create.parent.flatMap(check)
            case .setParent(let account, let parent):
                return check(account) ?? parent.flatMap(check) ?? parentOf(account).flatMap(check)
            case .setAccountCap(let account, _):
                return check(account) ?? parentOf(account).flatMap(check)
            case .setCap(let set) where set.target == .account:
                return check(set.account) ?? parentOf(set.account).flatMap(check)
            case .provision(let provision):
                return check(provision.account) ?? provision.parent.flatMap(check)
            case .definePlan:
                return WireError(.forbidden, "\(name) may touch only \(scope); \(opcode.name) defines a plan for every account")
            default:
                return check(command.account)
            }
        }
    }
}

/// Who may connect and as what: identities by client certificate name and by token digest,
/// and what a connection with neither gets.
public struct Credentials: Sendable, Equatable {
    public var byCertificate: [String: Principal]
    /// Keyed by the token's SHA-256, in lowercase hex.
    public var byTokenDigest: [String: Principal]
    /// A connection without a known certificate or a token; nil refuses it.
    public var anonymous: Principal?

    public init(byCertificate: [String: Principal] = [:], byTokenDigest: [String: Principal] = [:], anonymous: Principal? = nil) {
        self.byCertificate = byCertificate
        self.byTokenDigest = byTokenDigest
        self.anonymous = anonymous
    }

    /// Everyone is an admin of everything: for tests and in-process embedding only.
    public static let open = Credentials(anonymous: Principal(name: "anonymous", role: .admin, scope: .all, source: .anonymous))

    /// One admin token and nothing else: a fresh server's default.
    public static func adminToken(_ token: String) -> Credentials {
        Credentials(byTokenDigest: [SHA256.hex(Array(token.utf8)): Principal(name: "admin-token", role: .admin, scope: .all, source: .token)])
    }

    public enum Resolution: Equatable, Sendable {
        case accepted(Principal)
        case refused(String)
    }

    /// A connection's identity: its client certificate's, when one of its names is known;
    /// else its token's, which must be known if one was sent; else the anonymous principal.
    public func resolve(certificate: CertificateNames?, tokenDigest: String?) -> Resolution {
        if let certificate {
            for name in certificate.candidates {
                if let principal = byCertificate[name] { return .accepted(principal) }
            }
        }
        if let tokenDigest {
            if let principal = byTokenDigest[tokenDigest] { return .accepted(principal) }
            return .refused("the token was not accepted")
        }
        if let anonymous { return .accepted(anonymous) }
        if let certificate {
            return .refused("the client certificate (\(certificate)) is not a known identity, and no token was sent")
        }
        return .refused("this server requires a credential: a token in HELLO or a client certificate")
    }

    // MARK: - The credentials file

    /// Reads a credentials file (YAML or JSON):
    ///
    /// ```yaml
    /// identities:
    ///   - name: billing                 # named in logs, metrics and HELLO answers
    ///     certificate: spiffe://mesh.example/ns/billing/sa/billing   # a URI SAN or subject CN
    ///     role: admin                   # admin, gate or read
    ///   - name: agents-eu
    ///     tokenSha256: 5e88...          # or `token: <the token itself>`
    ///     role: gate
    ///     accounts: [acme, globex]      # and/or accountPrefix: "eu-"; "*" for every account
    /// anonymous:                        # neither certificate nor token; omit to refuse them
    ///   role: read
    ///   accounts: "*"
    /// ```
    public static func parse(yaml text: String, source: String) throws(ConfigurationError) -> Credentials {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ConfigurationError("\(source) is not valid YAML or JSON: \(error)")
        }
        guard let mapping = root?.mapping else { throw ConfigurationError("\(source) must be a mapping with `identities` (and optionally `anonymous`)") }
        var credentials = Credentials()
        for (key, value) in mapping {
            switch key.string {
            case "identities":
                guard let list = value.sequence else { throw ConfigurationError("\(source): identities must be a list") }
                for (index, item) in list.enumerated() {
                    try credentials.add(item, at: "\(source): identities[\(index)]")
                }
            case "anonymous":
                if value.null != nil { continue }
                credentials.anonymous = try principal(from: value, name: "anonymous", source: .anonymous, at: "\(source): anonymous")
            default:
                throw ConfigurationError("\(source): unknown key \"\(key.string ?? "?")\"; expected identities or anonymous")
            }
        }
        return credentials
    }

    private mutating func add(_ node: Node, at place: String) throws(ConfigurationError) {
        guard let mapping = node.mapping else { throw ConfigurationError("\(place) must be a mapping") }
        let known: Set<String> = ["name", "certificate", "token", "tokenSha256", "role", "accounts", "accountPrefix"]
        for key in mapping.keys where !known.contains(key.string ?? "") {
            throw ConfigurationError("\(place): unknown key \"\(key.string ?? "?")\"; known keys are \(known.sorted().joined(separator: ", "))")
        }
        guard let name = mapping["name"]?.string, !name.isEmpty else { throw ConfigurationError("\(place): every identity needs a name") }
        let certificate = mapping["certificate"]?.string
        let token = mapping["token"]?.string
        let digest = mapping["tokenSha256"]?.string?.lowercased()
        let ways = [certificate, token, digest].compactMap { $0 }
        guard ways.count == 1 else {
            throw ConfigurationError("\(place) (\(name)): give exactly one of certificate, token and tokenSha256")
        }
        if let certificate {
            guard !certificate.isEmpty else { throw ConfigurationError("\(place) (\(name)): certificate must not be empty") }
            guard byCertificate[certificate] == nil else { throw ConfigurationError("\(place) (\(name)): certificate \"\(certificate)\" is listed twice") }
            byCertificate[certificate] = try Credentials.principal(from: node, name: name, source: .certificate, at: place)
        } else {
            let hex: String
            if let token {
                guard token.utf8.count >= 16, token.utf8.count <= 256 else {
                    throw ConfigurationError("\(place) (\(name)): a token must be 16 to 256 bytes long")
                }
                hex = SHA256.hex(Array(token.utf8))
            } else {
                hex = digest ?? ""
                guard hex.utf8.count == 64, hex.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else {
                    throw ConfigurationError("\(place) (\(name)): tokenSha256 must be 64 hexadecimal digits (`tollgate token` prints one)")
                }
            }
            guard byTokenDigest[hex] == nil else { throw ConfigurationError("\(place) (\(name)): the same token is listed twice") }
            byTokenDigest[hex] = try Credentials.principal(from: node, name: name, source: .token, at: place)
        }
    }

    private static func principal(from node: Node, name: String, source: Principal.Source, at place: String) throws(ConfigurationError) -> Principal {
        guard let mapping = node.mapping else { throw ConfigurationError("\(place) must be a mapping") }
        guard let roleName = mapping["role"]?.string, let role = Role(name: roleName) else {
            throw ConfigurationError("\(place) (\(name)): role must be admin, gate or read")
        }
        var scope = AccountScope()
        switch mapping["accounts"] {
        case nil: break
        case .some(let accounts):
            if accounts.string == "*" {
                scope.everything = true
            } else if let list = accounts.sequence {
                for account in list {
                    guard let text = account.string, !text.isEmpty else { throw ConfigurationError("\(place) (\(name)): accounts must be names") }
                    scope.accounts.insert(text)
                }
            } else if let single = accounts.string, !single.isEmpty {
                scope.accounts.insert(single)
            } else {
                throw ConfigurationError("\(place) (\(name)): accounts must be \"*\", a name or a list of names")
            }
        }
        switch mapping["accountPrefix"] {
        case nil: break
        case .some(let prefixes):
            let list = prefixes.sequence.map(Array.init) ?? [prefixes]
            for prefix in list {
                guard let text = prefix.string, !text.isEmpty else {
                    throw ConfigurationError("\(place) (\(name)): accountPrefix must be a non-empty prefix or a list of them")
                }
                scope.prefixes.append(text)
            }
        }
        if !scope.everything && scope.accounts.isEmpty && scope.prefixes.isEmpty {
            // An admin is unrestricted unless it says otherwise; anyone else must say which
            // accounts, so that a forgotten line never hands out every account.
            guard role == .admin else {
                throw ConfigurationError("\(place) (\(name)): say which accounts a \(role) identity may touch: accounts: [...], accountPrefix: \"...\" or accounts: \"*\"")
            }
            scope.everything = true
        }
        return Principal(name: name, role: role, scope: scope, source: source)
    }
}

/// The credentials in force, replaced whole on reload. Connections remember the generation
/// they resolved their identity under and resolve again when it changes, so a revoked token
/// stops working on connections already open.
public final class AccessControl: Sendable {
    private let current: Mutex<Credentials>
    private let generationCounter = Atomic<UInt64>(1)

    public init(_ credentials: Credentials) {
        current = Mutex(credentials)
    }

    public var credentials: Credentials { current.withLock { $0 } }
    public var generation: UInt64 { generationCounter.load(ordering: .acquiring) }

    /// Installs new credentials; returns false (and changes nothing) if they are the same.
    @discardableResult
    public func replace(with credentials: Credentials) -> Bool {
        current.withLock { existing in
            guard existing != credentials else { return false }
            existing = credentials
            generationCounter.wrappingAdd(1, ordering: .releasing)
            return true
        }
    }

    public func resolve(certificate: CertificateNames?, tokenDigest: String?) -> (Credentials.Resolution, generation: UInt64) {
        current.withLock { credentials in
            (credentials.resolve(certificate: certificate, tokenDigest: tokenDigest), generationCounter.load(ordering: .relaxed))
        }
    }
}
