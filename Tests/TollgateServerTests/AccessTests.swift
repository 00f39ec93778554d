import Foundation
import Logging
import Synchronization
import Testing
import TollgateClient
import TollgateLedger
import TollgateServer
import TollgateWire

/// Tokens of the credentials file the access tests run with.
enum Tokens {
    static let admin = "admin-token-0123456789abcdef"
    static let gate = "gate-token-acme-0123456789abcdef"
    static let gateEU = "gate-token-eu-0123456789abcdef"
    static let read = "read-token-acme-0123456789abcdef"
    static let adminEU = "admin-token-eu-0123456789abcdef"

    static let credentials = """
        identities:
          - name: billing
            token: \(admin)
            role: admin
          - name: agents-acme
            tokenSha256: \(SHA256.hex(Array(gate.utf8)))
            role: gate
            accounts: [acme]
          - name: agents-eu
            token: \(gateEU)
            role: gate
            accountPrefix: "eu-"
          - name: dashboard
            token: \(read)
            role: read
            accounts: acme
          - name: eu-operator
            token: \(adminEU)
            role: admin
            accountPrefix: eu-
        """
}

/// Log lines as text, to check what is logged (and what never is).
final class CollectedLog: Sendable {
    let lines = Mutex<[String]>([])

    var logger: Logger {
        Logger(label: "test-tollgated") { label in CollectingHandler(log: self) }
    }

    var text: String { lines.withLock { $0.joined(separator: "\n") } }

    struct CollectingHandler: LogHandler {
        let log: CollectedLog
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let fields = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            log.lines.withLock { $0.append("\(event.level) \(event.message) \(fields)") }
        }
    }
}

@Suite struct CredentialsFileTests {
    @Test func parsesIdentitiesRolesAndScopes() throws {
        let credentials = try Credentials.parse(yaml: Tokens.credentials, source: "test")
        let gate = try #require(credentials.byTokenDigest[SHA256.hex(Array(Tokens.gate.utf8))])
        #expect(gate.name == "agents-acme" && gate.role == .gate && gate.scope == AccountScope(accounts: ["acme"]))
        let eu = try #require(credentials.byTokenDigest[SHA256.hex(Array(Tokens.gateEU.utf8))])
        #expect(eu.scope.contains("eu-1") && !eu.scope.contains("us-1") && !eu.scope.contains("acme"))
        #expect(credentials.byTokenDigest[SHA256.hex(Array(Tokens.admin.utf8))]?.scope == .all)
        #expect(credentials.anonymous == nil)
        #expect(credentials.byTokenDigest.count == 5)
    }

    @Test(arguments: [
        ("identities:\n  - name: a\n    token: 0123456789abcdef0123\n    role: gate\n", "say which accounts"),
        ("identities:\n  - name: a\n    token: 0123456789abcdef0123\n    certificate: cn\n    role: admin\n", "exactly one of"),
        ("identities:\n  - name: a\n    token: short\n    role: admin\n", "16 to 256 bytes"),
        ("identities:\n  - name: a\n    tokenSha256: abc\n    role: admin\n", "64 hexadecimal digits"),
        ("identities:\n  - name: a\n    certificate: cn\n    role: owner\n", "role must be admin, gate or read"),
        ("identities:\n  - name: a\n    certificate: cn\n    role: admin\n    acounts: [x]\n", "unknown key \"acounts\""),
        ("identities:\n  - certificate: cn\n    role: admin\n", "needs a name"),
        ("identities:\n  - name: a\n    certificate: cn\n    role: admin\n  - name: b\n    certificate: cn\n    role: read\n    accounts: \"*\"\n", "listed twice"),
        ("users: []\n", "unknown key \"users\""),
        ("identities: [\n", "not valid YAML"),
    ])
    func refusesAMistakeWithAClearMessage(text: String, expected: String) {
        do {
            _ = try Credentials.parse(yaml: text, source: "creds.yaml")
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.description.contains(expected), "\(error.description)")
            #expect(error.description.contains("creds.yaml"))
        }
    }

    @Test func theExampleFileReadsAsItsCommentsSay() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("examples/credentials.yaml").path
        let credentials = try Credentials.parse(yaml: try String(contentsOfFile: path, encoding: .utf8), source: path)
        let agent = try #require(credentials.byCertificate["spiffe://mesh.example/ns/agents/sa/runtime"])
        #expect(agent.role == .gate && agent.scope.contains("tenant-42") && !agent.scope.contains("acme"))
        #expect(credentials.byCertificate["spiffe://mesh.example/ns/billing/sa/billing"]?.role == .admin)
        let reports = try #require(credentials.byTokenDigest[SHA256.hex(Array("example-only-token-do-not-use-0001".utf8))])
        #expect(reports.name == "nightly-reports" && reports.role == .read && reports.scope == .all)
        #expect(credentials.anonymous == nil)
    }

    @Test func sha256MatchesTheStandardVectors() {
        #expect(SHA256.hex([UInt8]()) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(
            SHA256.hex(Array("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq".utf8))
                == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256.hex([UInt8](repeating: 0x61, count: 1_000_000)) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func rolesAllowExactlyTheirOperations() {
        let gateOps: [Opcode] = [.check, .reserve, .spend, .commit, .release, .extend, .balance, .batch, .reserveMetered, .spendMetered, .commitMetered]
        for opcode in Opcode.allCases where ![.error, .event, .hello, .ping].contains(opcode) {
            #expect(Role.admin.allows(opcode))
            #expect(Role.gate.allows(opcode) == gateOps.contains(opcode), "gate \(opcode.name)")
            #expect(Role.read.allows(opcode) == [.balance, .balanceAt, .subscribe].contains(opcode), "read \(opcode.name)")
        }
    }
}

@Suite struct AccessTests {
    static func start(log: CollectedLog? = nil, _ adjust: (inout ServerConfiguration) -> Void = { _ in }) async throws -> TestServer {
        let file = NSTemporaryDirectory() + "tollgate-credentials-\(UUID().uuidString).yaml"
        try Tokens.credentials.write(toFile: file, atomically: true, encoding: .utf8)
        return try await TestServer.start(logger: log?.logger) { configuration in
            configuration.credentials = nil
            configuration.credentialsFile = file
            adjust(&configuration)
        }
    }

    func expectForbidden(_ what: String, _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("\(what) was allowed")
        } catch {
            guard case .server(let wire) = error as? TollgateError, wire.status == .forbidden else {
                Issue.record("\(what): expected forbidden, got \(error)")
                return
            }
        }
    }

    /// A connection's identity is decided at its first HELLO: a second one, even with the admin
    /// token, is refused, and the connection keeps its first identity and role.
    @Test func aSecondHelloCannotRaiseAConnectionsRole() async throws {
        let server = try await Self.start()
        let socket = try await RawSocket.connect(port: server.port)
        await socket.send(.hello(Hello(clientName: "reader", token: Tokens.read)), id: 1)
        let (_, first) = try await socket.readFrame()
        guard case .hello(let answer) = first else {
            Issue.record("no HELLO answer: \(first)")
            return
        }
        #expect(answer.identity == "dashboard" && answer.role == 1)
        await socket.send(.hello(Hello(clientName: "raised", token: Tokens.admin)), id: 2)
        let (header, second) = try await socket.readFrame()
        #expect(header.requestID == 2 && header.opcode == Opcode.hello.rawValue && second.status == ProtocolStatus.forbidden.rawValue)
        await socket.send(.command(.createAccount(CreateAccount(account: "raised")), key: "k"), id: 3)
        let (_, third) = try await socket.readFrame()
        #expect(third.status == ProtocolStatus.forbidden.rawValue)
        #expect(!server.server.service.hasAccount("raised"))
        try await server.stop()
    }

    /// A child's cap and its place under its parent belong to the parent: an admin scoped to
    /// the child alone can change neither, so it cannot drain a pool its siblings share.
    @Test func aChildsAdminCannotLiftItsCapAtTheParentOrLeaveIt() async throws {
        let server = try await Self.start()
        let admin = try await server.client(token: Tokens.admin)
        _ = try await admin.apply(.createAccount(CreateAccount(account: "org")))
        _ = try await admin.apply(.createAccount(CreateAccount(account: "eu-team", parent: "org")))
        _ = try await admin.apply(.setAccountCap(account: "eu-team", limit: 100))
        _ = try await admin.apply(.createAccount(CreateAccount(account: "eu-solo")))
        let operator_ = try await server.client(token: Tokens.adminEU)
        await expectForbidden("lifting a child's cap") { _ = try await operator_.apply(.setAccountCap(account: "eu-team", limit: nil)) }
        await expectForbidden("detaching a child") { _ = try await operator_.apply(.setParent(account: "eu-team", parent: nil)) }
        // Its own top-level account is its own business.
        _ = try await operator_.apply(.setAccountCap(account: "eu-solo", limit: 50))
        #expect(server.server.service.parent(of: "eu-team") == "org")
        // The unscoped admin may.
        _ = try await admin.apply(.setParent(account: "eu-team", parent: nil))
        #expect(server.server.service.parent(of: "eu-team") == nil)
        await admin.close()
        await operator_.close()
        try await server.stop()
    }

    @Test func aGateCredentialCannotGrantCreditsOrChangeAnything() async throws {
        let log = CollectedLog()
        let server = try await Self.start(log: log)
        let admin = try await server.client(token: Tokens.admin)
        try await admin.setUpTeamPlan(topUp: false)
        _ = try await admin.apply(.createAccount(CreateAccount(account: "globex")))
        let gate = try await server.client(token: Tokens.gate)
        #expect(gate.serverHello?.identity == "agents-acme")
        #expect(gate.serverHello?.roleName == "gate")

        // Everything a gate does, on its own account.
        let hold = try await gate.reserve(account: "acme", member: "ana", product: "ai.assistant", quantity: 1)
        try await gate.extend(account: "acme", hold: hold.hold!, ttlMilliseconds: 60_000)
        try await gate.commit(account: "acme", hold: hold.hold!, amount: .credits(10))
        let second = try await gate.reserve(account: "acme", member: "ana", product: "ai.preview", quantity: 1)
        try await gate.release(account: "acme", hold: second.hold!)
        _ = try await gate.spend(account: "acme", member: "ben", product: "ai.summary", quantity: 1)
        _ = try await gate.check(account: "acme", member: "ben", product: "ai.summary", quantity: 1)
        let before = try await gate.balance(account: "acme")
        #expect(before.funds.pool == 400 - 10 - 7)

        // Every admin operation is forbidden, and changes nothing.
        let now = Instant(microsecondsSinceEpoch: 0)
        let adminCommands: [Command] = [
            .addGrant(AddGrant(account: "acme", amount: 1_000_000, effectiveAt: now)),
            .voidGrant(account: "acme", grant: 1),
            .setRate(product: "ai.assistant", creditsPerUnit: 0 + 1, effectiveAt: now),
            .setAccountRate(account: "acme", product: "ai.assistant", creditsPerUnit: 1, effectiveAt: now),
            .createAccount(CreateAccount(account: "acme-2")),
            .setParent(account: "acme", parent: "globex"),
            .setOverage(account: "acme", policy: .overdraft(limit: 1_000_000)),
            .setPeriod(account: "acme", period: .monthly(anchor: now)),
            .setAccountCap(account: "acme", limit: nil),
            .addMember(account: "acme", member: "mallory"),
            .removeMember(account: "acme", member: "ana"),
            .setMemberCap(account: "acme", member: "ana", limit: nil),
            .createGroup(account: "acme", group: "g"),
            .deleteGroup(account: "acme", group: "g"),
            .setGroupCap(account: "acme", group: "g", limit: nil),
            .addToGroup(account: "acme", group: "g", member: "ana"),
            .removeFromGroup(account: "acme", group: "g", member: "ana"),
            .setCap(SetCap(account: "acme", target: .member("ana"), window: .hour, limit: nil)),
            .setConcurrency(account: "acme", target: .eachMember, limit: nil),
            .setMeteredRate(product: "gpt-x", dimension: "input", rate: MeteredRate(credits: 0, per: 1), effectiveAt: now),
        ]
        for command in adminCommands {
            await expectForbidden("\(command.opcode.name)") { _ = try await gate.apply(command) }
        }
        // Another account, for every gate operation.
        await expectForbidden("reserve on globex") { _ = try await gate.reserve(account: "globex", member: nil, product: "ai.assistant", quantity: 1) }
        await expectForbidden("spend on globex") { _ = try await gate.spend(account: "globex", member: nil, product: "ai.assistant", quantity: 1) }
        await expectForbidden("check on globex") { _ = try await gate.check(account: "globex", member: nil, product: "ai.assistant", quantity: 1) }
        await expectForbidden("balance of globex") { _ = try await gate.balance(account: "globex") }
        await expectForbidden("commit on globex") { try await gate.commit(account: "globex", hold: 1) }
        await expectForbidden("release on globex") { try await gate.release(account: "globex", hold: 1) }
        await expectForbidden("extend on globex") { try await gate.extend(account: "globex", hold: 1, ttlMilliseconds: 1_000) }
        let metered = MeteredRequest(account: "globex", member: nil, product: "gpt-x", dimensions: [DimensionQuantity("input", 1)])
        await expectForbidden("metered reserve on globex") { _ = try await gate.apply(.reserveMetered(metered, ttlMicroseconds: 1_000_000)) }
        await expectForbidden("metered spend on globex") { _ = try await gate.apply(.spendMetered(metered)) }
        await expectForbidden("metered commit on globex") {
            _ = try await gate.apply(.commitMetered(hold: HoldReference(account: "globex", hold: 1), dimensions: [], isFinal: true))
        }
        // History is the read role's.
        await expectForbidden("balance at a past time") { _ = try await gate.balance(account: "acme", at: Instant(microsecondsSinceEpoch: 1)) }

        // A batch: items outside the scope are refused one by one; the rest are decided.
        let items: [WireRequest] = [
            .command(.spend(Spend(DecisionRequest(account: "acme", member: "cy", product: "ai.preview", quantity: 1))), key: "b1"),
            .command(.spend(Spend(DecisionRequest(account: "globex", member: nil, product: "ai.preview", quantity: 1))), key: "b2"),
            .check(DecisionRequest(account: "globex", member: nil, product: "ai.preview", quantity: 1)),
        ]
        let answers = try await gate.batch(items)
        guard case .answer(.decision(let spent)) = answers[0].response else { Issue.record("\(answers[0])"); return }
        #expect(spent.cost == 5)
        for answer in answers.dropFirst() {
            guard case .error(let error) = answer.response else { Issue.record("\(answer)"); continue }
            #expect(error.status == .forbidden)
        }

        // The connection is still open after all those refusals, and nothing changed but
        // what the gate was allowed to do.
        try await gate.ping()
        let after = try await admin.balance(account: "acme")
        #expect(after.funds.pool == before.funds.pool - 5)
        #expect(after.grants.count == 1)
        #expect(try await admin.balance(account: "globex").funds.pool == 0)

        // Counted, and logged without the token.
        let metrics = try await RawHTTP.get(port: server.adminPort, path: "/metrics")
        #expect(metrics.contains(#"tollgate_access_refusals_total{status="forbidden",role="gate",reason="role"}"#))
        #expect(metrics.contains(#"tollgate_access_refusals_total{status="forbidden",role="gate",reason="scope"}"#))
        let logged = log.text
        #expect(logged.contains("forbidden") && logged.contains("identity=agents-acme") && logged.contains("ADD_GRANT"))
        #expect(!logged.contains(Tokens.gate) && !logged.contains(Tokens.admin))
        // At most five refusals per connection reach the log.
        #expect(logged.components(separatedBy: "identity=agents-acme").count - 1 <= 6)

        await gate.close()
        await admin.close()
        try await server.stop()
        #expect(log.text.contains("unlogged"))
    }

    @Test func aPrefixScopeAndAScopedAdmin() async throws {
        let server = try await Self.start()
        let admin = try await server.client(token: Tokens.admin)
        try await admin.setUpTeamPlan(account: "eu-1", topUp: false)
        let euAdmin = try await server.client(token: Tokens.adminEU)
        // A scoped admin manages its own accounts...
        _ = try await euAdmin.apply(.createAccount(CreateAccount(account: "eu-2")))
        _ = try await euAdmin.apply(.addGrant(AddGrant(account: "eu-2", amount: 50, effectiveAt: Instant(microsecondsSinceEpoch: 0))))
        _ = try await euAdmin.apply(.setParent(account: "eu-2", parent: "eu-1"))
        // ...but not another's, not one under a parent outside its scope, and not the rate
        // card, which every account shares.
        await expectForbidden("create us-1") { _ = try await euAdmin.apply(.createAccount(CreateAccount(account: "us-1"))) }
        await expectForbidden("create under a parent outside") {
            _ = try await euAdmin.apply(.createAccount(CreateAccount(account: "eu-3", parent: "acme")))
        }
        await expectForbidden("set parent outside") { _ = try await euAdmin.apply(.setParent(account: "eu-2", parent: "acme")) }
        await expectForbidden("set the rate card") {
            _ = try await euAdmin.apply(.setRate(product: "ai.assistant", creditsPerUnit: 1, effectiveAt: Instant(microsecondsSinceEpoch: 0)))
        }
        await expectForbidden("set a metered rate") {
            _ = try await euAdmin.apply(
                .setMeteredRate(product: "gpt-x", dimension: "input", rate: MeteredRate(credits: 1, per: 1_000), effectiveAt: Instant(microsecondsSinceEpoch: 0)))
        }

        let gate = try await server.client(token: Tokens.gateEU)
        _ = try await gate.spend(account: "eu-1", member: "ana", product: "ai.preview", quantity: 1)
        await expectForbidden("spend on acme") { _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1) }
        await gate.close()
        await euAdmin.close()
        await admin.close()
        try await server.stop()
    }

    @Test func aReadCredentialReadsBalancesAndHistoryOnly() async throws {
        let server = try await Self.start()
        let admin = try await server.client(token: Tokens.admin)
        try await admin.setUpTeamPlan(topUp: false)
        let read = try await server.client(token: Tokens.read)
        #expect(read.serverHello?.roleName == "read")
        #expect(try await read.balance(account: "acme").funds.pool == 400)
        let past = wallClock()
        try await Task.sleep(for: .milliseconds(50))
        #expect(try await read.balance(account: "acme", at: past).funds.pool == 400)
        await expectForbidden("check") { _ = try await read.check(account: "acme", member: "ana", product: "ai.preview", quantity: 1) }
        await expectForbidden("reserve") { _ = try await read.reserve(account: "acme", member: "ana", product: "ai.preview", quantity: 1) }
        await expectForbidden("spend") { _ = try await read.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1) }
        await expectForbidden("batch") {
            _ = try await read.batch([.check(DecisionRequest(account: "acme", member: nil, product: "ai.preview", quantity: 1))])
        }
        await expectForbidden("balance of another account") { _ = try await read.balance(account: "globex") }
        #expect(try await admin.balance(account: "acme").funds.pool == 400)
        await read.close()
        await admin.close()
        try await server.stop()
    }

    @Test func unknownOrMissingCredentialsAreRefusedAtHello() async throws {
        let log = CollectedLog()
        let server = try await Self.start(log: log)
        for token in ["", "not-a-token-of-this-server-0000"] {
            do {
                let client = try await server.client(token: token, retries: 0)
                await client.close()
                Issue.record("connected with \"\(token)\"")
            } catch {
                guard case .server(let wire) = error as? TollgateError else { Issue.record("\(error)"); continue }
                #expect(wire.status == .unauthorized)
            }
        }
        // A raw client hears why and the connection closes.
        let socket = try await RawSocket.connect(port: server.port)
        await socket.send(.hello(Hello(clientName: "raw", token: "wrong-token-0000000000")), id: 1)
        let (header, response) = try await socket.readFrame()
        #expect(header.status == ProtocolStatus.unauthorized.rawValue && header.opcode == Opcode.error.rawValue)
        #expect("\(response)".contains("the token was not accepted"))
        #expect(await socket.read(1).isEmpty)
        socket.shut()
        #expect(!log.text.contains("not-a-token-of-this-server") && !log.text.contains("wrong-token"))
        #expect(log.text.contains("refused a connection"))
        let metrics = try await RawHTTP.get(port: server.adminPort, path: "/metrics")
        #expect(metrics.contains(#"tollgate_access_refusals_total{status="unauthorized",role="none",reason="credential"}"#))
        try await server.stop()
    }

    @Test func anAnonymousPrincipalWhenTheFileGivesOne() async throws {
        let file = NSTemporaryDirectory() + "tollgate-credentials-\(UUID().uuidString).yaml"
        try (Tokens.credentials + "\nanonymous:\n  role: read\n  accounts: [acme]\n").write(toFile: file, atomically: true, encoding: .utf8)
        let server = try await TestServer.start {
            $0.credentials = nil
            $0.credentialsFile = file
        }
        let admin = try await server.client(token: Tokens.admin)
        try await admin.setUpTeamPlan(topUp: false)
        let anonymous = try await server.client()
        #expect(anonymous.serverHello?.identity == "anonymous" && anonymous.serverHello?.roleName == "read")
        _ = try await anonymous.balance(account: "acme")
        await expectForbidden("spend") { _ = try await anonymous.spend(account: "acme", member: nil, product: "ai.preview", quantity: 1) }
        await anonymous.close()
        await admin.close()
        try await server.stop()
    }

    @Test func aWithdrawnTokenStopsWorkingOnAnOpenConnection() async throws {
        let file = NSTemporaryDirectory() + "tollgate-credentials-\(UUID().uuidString).yaml"
        try Tokens.credentials.write(toFile: file, atomically: true, encoding: .utf8)
        let server = try await TestServer.start {
            $0.credentials = nil
            $0.credentialsFile = file
            $0.reloadCheckSeconds = 0
        }
        let admin = try await server.client(token: Tokens.admin)
        try await admin.setUpTeamPlan(topUp: false)
        let gate = try await server.client(token: Tokens.gate, retries: 0)
        _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1)

        // The gate's scope narrows to another account: forbidden from the next request on.
        try Tokens.credentials.replacingOccurrences(of: "accounts: [acme]", with: "accounts: [globex]").write(toFile: file, atomically: true, encoding: .utf8)
        #expect(server.server.reload().credentialsChanged)
        await expectForbidden("spend after the scope moved") { _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1) }

        // A broken file is refused and the credentials in force stay.
        try "identities: [".write(toFile: file, atomically: true, encoding: .utf8)
        let broken = server.server.reload()
        #expect(!broken.credentialsChanged && broken.errors.count == 1)
        try await admin.ping()

        // The token is withdrawn: the open connection is closed at its next request.
        try Tokens.credentials.replacingOccurrences(of: "  - name: agents-acme\n    tokenSha256: \(SHA256.hex(Array(Tokens.gate.utf8)))\n    role: gate\n    accounts: [acme]\n", with: "")
            .write(toFile: file, atomically: true, encoding: .utf8)
        #expect(server.server.reload().credentialsChanged)
        do {
            _ = try await gate.spend(account: "acme", member: "ana", product: "ai.preview", quantity: 1)
            Issue.record("a withdrawn token still worked")
        } catch {
            guard case .server(let wire) = error else { Issue.record("\(error)"); return }
            #expect(wire.status == .unauthorized)
        }
        try await admin.ping()
        await gate.close()
        await admin.close()
        try await server.stop()
    }

    @Test func theCredentialsFileIsReloadedWhenItChanges() async throws {
        let file = NSTemporaryDirectory() + "tollgate-credentials-\(UUID().uuidString).yaml"
        try Tokens.credentials.write(toFile: file, atomically: true, encoding: .utf8)
        let server = try await TestServer.start {
            $0.credentials = nil
            $0.credentialsFile = file
            $0.reloadCheckSeconds = 1
        }
        let newToken = "a-token-added-later-0123456789"
        try (Tokens.credentials + "\n  - name: late\n    token: \(newToken)\n    role: read\n    accounts: \"*\"\n").write(toFile: file, atomically: true, encoding: .utf8)
        var connected: TollgateClient?
        for _ in 0..<300 where connected == nil {
            connected = try? await server.client(token: newToken, retries: 0)
            if connected == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(connected?.serverHello?.identity == "late")
        await connected?.close()
        try await server.stop()
    }
}

@Suite struct TokenCommandTests {
    @Test func aTokenMadeByTheCLIIsAcceptedWithItsRoleAndScope() async throws {
        let directory = NSTemporaryDirectory() + "tollgate-token-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let tokenFile = directory + "/agent.token"
        let printed = try await TestPKI.run(
            JournalCLITests.tollgate, ["token", "new", "--name", "agent", "--role", "gate", "--account", "acme", "--out", tokenFile])
        let mode = (try FileManager.default.attributesOfItem(atPath: tokenFile)[.posixPermissions] as? NSNumber)?.intValue
        #expect(mode == 0o600)
        let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!printed.contains(token), "the entry carries the digest, not the token")
        let entry = printed.split(separator: "\n").filter { !$0.hasPrefix("#") }.joined(separator: "\n")
        let credentials = directory + "/credentials.yaml"
        try ("identities:\n" + entry + "\n  - name: root\n    token: \(Tokens.admin)\n    role: admin\n").write(toFile: credentials, atomically: true, encoding: .utf8)
        let listed = try await TestPKI.run(JournalCLITests.tollgate, ["token", "check", credentials])
        #expect(listed.contains("token: agent, gate, acme") && listed.contains("anonymous: refused"))

        let server = try await TestServer.start {
            $0.credentials = nil
            $0.credentialsFile = credentials
        }
        let admin = try await server.client(token: Tokens.admin)
        try await admin.setUpTeamPlan(topUp: false)
        // The CLI with --token-file: allowed on acme, forbidden (exit 1, status 110) elsewhere.
        let spent = try await TestPKI.run(
            JournalCLITests.tollgate, ["spend", "acme", "ai.preview", "1", "--server", "127.0.0.1:\(server.port)", "--token-file", tokenFile, "--json"])
        #expect(spent.contains("\"cost\" : 5"), "\(spent)")
        do {
            try await TestPKI.run(
                JournalCLITests.tollgate,
                ["grant", "add", "acme", "1000", "--server", "127.0.0.1:\(server.port)", "--token-file", tokenFile, "--json"])
            Issue.record("the gate token granted credits through the CLI")
        } catch {
            #expect("\(error)".contains("110") && "\(error)".contains("forbidden"), "\(error)")
        }
        #expect(try await admin.balance(account: "acme").funds.pool == 395)
        await admin.close()
        try await server.stop()
    }
}

@Suite struct FreshStartTests {
    @Test func aFreshServerWritesAnAdminTokenAndRefusesEveryoneElse() async throws {
        let data = NSTemporaryDirectory() + "tollgate-fresh-\(UUID().uuidString)"
        let server = try await TestServer.start {
            $0.credentials = nil
            $0.dataDirectory = data
        }
        let path = data + "/admin.token"
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        let token = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.hasPrefix("tg_") && token.count == 67)

        let admin = try await server.client(token: token)
        #expect(admin.serverHello?.roleName == "admin")
        _ = try await admin.apply(.createAccount(CreateAccount(account: "acme")))
        await admin.close()
        do {
            _ = try await server.client(retries: 0)
            Issue.record("a client without the token connected")
        } catch {
            #expect((error as? TollgateError)?.status == ProtocolStatus.unauthorized.rawValue)
        }
        try await server.stop()

        // A restart keeps the same token.
        let again = try await TestServer.start {
            $0.credentials = nil
            $0.dataDirectory = data
        }
        let client = try await again.client(token: token)
        await client.close()
        try await again.stop()
        try? FileManager.default.removeItem(atPath: data)
    }

    @Test func aConnectionWithoutHelloIsClosedAfterTheHandshakeTimeout() async throws {
        let server = try await TestServer.start {
            $0.credentials = nil
            $0.handshakeTimeoutMilliseconds = 200
        }
        // Timed from before the connect: the server's timer starts when it accepts, and the
        // test's task may resume from the connect late on a busy machine.
        let started = ContinuousClock.now
        let socket = try await RawSocket.connect(port: server.port, receiveTimeoutMilliseconds: 30_000)
        let (header, response) = try await socket.readFrame()
        let waited = ContinuousClock.now - started
        #expect(header.status == ProtocolStatus.idleTimeout.rawValue)
        #expect("\(response)".contains("no HELLO within 200 ms"))
        // Not before the 200 ms configured, and well before the 10 s default: the configured
        // timeout is the one applied, however busy the machine.
        #expect(waited >= .milliseconds(150) && waited < .milliseconds(10_000))
        #expect(await socket.read(1).isEmpty)
        socket.shut()
        try await server.stop()
    }

    @Test func plaintextOffLoopbackIsRefusedUnlessAllowed() async throws {
        do {
            let server = try await TestServer.start {
                $0.host = "0.0.0.0"
                $0.adminPort = nil
            }
            try await server.stop()
            Issue.record("plaintext on 0.0.0.0 started")
        } catch {
            #expect("\(error)".contains("not a loopback address"))
        }
        let allowed = try await TestServer.start {
            $0.host = "0.0.0.0"
            $0.adminPort = nil
            $0.allowPlaintext = true
        }
        try await allowed.stop()
    }

    @Test func tlsSettingsMustBeComplete() {
        var configuration = ServerConfiguration()
        #expect(throws: ConfigurationError.self) { try configuration.apply([("tlsCertificateFile", "/x.pem")], source: "test") }
        configuration = ServerConfiguration()
        #expect(throws: ConfigurationError.self) { try configuration.apply([("tlsClientCAFile", "/ca.pem")], source: "test") }
        configuration = ServerConfiguration()
        #expect(throws: ConfigurationError.self) {
            try configuration.apply([("tlsCertificateFile", "/x.pem"), ("tlsKeyFile", "/x.key"), ("tlsClientCertificates", "required")], source: "test")
        }
        configuration = ServerConfiguration()
        #expect(throws: ConfigurationError.self) { try configuration.apply([("tlsMinimumVersion", "1.1")], source: "test") }
        configuration = ServerConfiguration()
        #expect(throws: Never.self) {
            try configuration.apply(
                [("tlsCertificateFile", "/x.pem"), ("tlsKeyFile", "/x.key"), ("tlsClientCAFile", "/ca.pem"), ("tlsMinimumVersion", "1.2")], source: "test")
        }
        #expect(configuration.tls?.clientCertificates == .required && configuration.tls?.minimumVersion == .tls12)
    }
}
