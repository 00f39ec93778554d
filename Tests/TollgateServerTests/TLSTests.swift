import Foundation
import Testing
import TollgateClient
import TollgateLedger
import TollgateLedgerTestSupport
import TollgateServer
import TollgateWire

#if canImport(Glibc)
import Glibc
#endif

/// TLS and mTLS on the gate port, with certificates made by `openssl` for each test.
@Suite(.serialized) struct TLSTests {
    /// A server with TLS; `clientCA` turns on mTLS (`required` unless `clients` says otherwise).
    static func start(
        _ pki: TestPKI, server: TestPKI.Pair, clientCA: String? = nil, clients: TLSSettings.ClientCertificates? = nil,
        credentials: String? = nil, _ adjust: (inout ServerConfiguration) -> Void = { _ in }
    ) async throws -> TestServer {
        var file: String?
        if let credentials {
            file = pki.directory + "/credentials-\(UUID().uuidString).yaml"
            try credentials.write(toFile: file!, atomically: true, encoding: .utf8)
        }
        return try await TestServer.start { configuration in
            configuration.tlsCertificateFile = server.certificate
            configuration.tlsKeyFile = server.key
            configuration.tlsClientCAFile = clientCA
            configuration.tlsClientCertificates = clients
            if let file {
                configuration.credentials = nil
                configuration.credentialsFile = file
            }
            adjust(&configuration)
        }
    }

    static let meshCredentials = """
        identities:
          - name: agent-runtime
            certificate: spiffe://test.tollgate/ns/agents/sa/runtime
            role: gate
            accounts: [acme]
          - name: billing
            certificate: billing-service
            role: admin
          - name: ops
            token: ops-token-0123456789abcdef
            role: admin
        """

    func expectRefused(_ what: String, _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("\(what): connected")
        } catch {
            // Refused in the TLS handshake (by either side), or the connection closed by it.
            guard let error = error as? TollgateError else { Issue.record("\(what): \(error)"); return }
            switch error {
            case .tls, .connection: break
            default: Issue.record("\(what): expected a TLS refusal, got \(error)")
            }
        }
    }

    @Test func serverTLSCarriesTheProtocol() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let server = try await Self.start(pki, server: try await pki.issueServer())
        let client = try await server.client(tls: TLSOptions(caFile: pki.caCertificate))
        try await client.ping()
        _ = try await client.apply(.createAccount(CreateAccount(account: "acme")))
        await client.close()

        let byName = try await TollgateClient.connect(.init(host: "localhost", port: server.port, tls: TLSOptions(caFile: pki.caCertificate)))
        try await byName.ping()
        await byName.close()

        // A client that does not trust the server's CA refuses it, and so does one that
        // expects another name.
        await expectRefused("untrusted server") { _ = try await server.client(retries: 0, tls: TLSOptions(caFile: pki.wrongCACertificate)) }
        // A plaintext client on the TLS port gets nowhere, and the server keeps serving.
        await expectRefused("plaintext") {
            _ = try await TollgateClient.connect(.init(port: server.port, connectTimeoutMilliseconds: 1_000, retries: 0))
        }
        let again = try await server.client(tls: TLSOptions(caFile: pki.caCertificate))
        try await again.ping()
        await again.close()
        let metrics = try await RawHTTP.get(port: server.adminPort, path: "/metrics")
        #expect(metrics.contains(#"tollgate_tls_handshakes_total{outcome="ok"}"#))
        #expect(metrics.contains(#"tollgate_tls_handshakes_total{outcome="failed"}"#))
        #expect(metrics.contains("tollgate_tls_certificate_not_after_seconds"))
        try await server.stop()
    }

    /// The handshake timeout holds before TLS starts: a socket that stays silent, or sends
    /// only the header of a TLS record, is closed, and so cannot fill the connection slots.
    @Test func aConnectionThatNeverFinishesTLSIsClosed() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let server = try await Self.start(pki, server: try await pki.issueServer()) {
            $0.handshakeTimeoutMilliseconds = 300
            $0.maxConnections = 4
        }
        var strangers: [RawSocket] = []
        for index in 0..<4 {
            let socket = try await RawSocket.connect(port: server.port, receiveTimeoutMilliseconds: 60_000)
            if index % 2 == 1 { await socket.send([0x16, 0x03, 0x01, 0x02, 0x00]) }  // a record header, then nothing
            strangers.append(socket)
        }
        for socket in strangers {
            #expect(await socket.isClosedByServer())
            await socket.shut()
        }
        // Their slots are free again: a real client gets in.
        let client = try await server.client(tls: TLSOptions(caFile: pki.caCertificate))
        try await client.ping()
        await client.close()
        try await server.stop()
    }

    @Test func theClientChecksTheServersName() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        // Named for localhost only: connecting to 127.0.0.1, the name must be given.
        let pair = try await pki.issue("named", commonName: "tollgated", subjectAltNames: ["DNS:localhost"], server: true)
        let server = try await Self.start(pki, server: pair)
        await expectRefused("no name to match") { _ = try await server.client(retries: 0, tls: TLSOptions(caFile: pki.caCertificate)) }
        await expectRefused("wrong name") {
            _ = try await server.client(retries: 0, tls: TLSOptions(caFile: pki.caCertificate, serverName: "billing.example"))
        }
        let named = try await server.client(tls: TLSOptions(caFile: pki.caCertificate, serverName: "localhost"))
        try await named.ping()
        await named.close()
        try await server.stop()
    }

    /// A counter's value in the /metrics text (0 when absent). The registry is shared by every
    /// server in the test process, so tests compare before and after.
    static func metric(_ series: String, port: Int) async throws -> Int {
        let text = try await RawHTTP.get(port: port, path: "/metrics")
        guard let line = text.split(separator: "\n").first(where: { $0.hasPrefix(series + " ") }) else { return 0 }
        return Int(Double(line.split(separator: " ").last ?? "0") ?? 0)
    }

    @Test func anExpiredServerCertificateIsRefusedByTheClient() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let server = try await Self.start(pki, server: try await pki.issueServer(days: -1))
        await expectRefused("expired server certificate") { _ = try await server.client(retries: 0, tls: TLSOptions(caFile: pki.caCertificate)) }
        try await server.stop()
    }

    @Test func mutualTLSTakesTheIdentityFromTheCertificate() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let agent = try await pki.issue("agent", commonName: "agent-7", subjectAltNames: ["URI:spiffe://test.tollgate/ns/agents/sa/runtime"])
        let billing = try await pki.issue("billing", commonName: "billing-service")
        let stranger = try await pki.issue("stranger", commonName: "stranger")
        let foreign = try await pki.issue("foreign", commonName: "billing-service", ca: "wrong-ca")
        let expired = try await pki.issue("expired", commonName: "billing-service", days: -1)
        let server = try await Self.start(pki, server: try await pki.issueServer(), clientCA: pki.caCertificate, credentials: Self.meshCredentials)
        let failedSeries = #"tollgate_tls_handshakes_total{outcome="failed"}"#
        let failedBefore = try await Self.metric(failedSeries, port: server.adminPort)

        func options(_ pair: TestPKI.Pair?) -> TLSOptions {
            TLSOptions(caFile: pki.caCertificate, certificateFile: pair?.certificate, keyFile: pair?.key)
        }
        // The URI SAN names the agent runtime; the CN names the billing service.
        let admin = try await server.client(tls: options(billing))
        #expect(admin.serverHello?.identity == "billing" && admin.serverHello?.roleName == "admin")
        _ = try await admin.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: Instant(microsecondsSinceEpoch: 0)))
        _ = try await admin.apply(.createAccount(CreateAccount(account: "acme")))
        _ = try await admin.apply(.addGrant(AddGrant(account: "acme", amount: 10, effectiveAt: Instant(microsecondsSinceEpoch: 0))))
        let gate = try await server.client(tls: options(agent))
        #expect(gate.serverHello?.identity == "agent-runtime" && gate.serverHello?.roleName == "gate")
        _ = try await gate.spend(account: "acme", member: nil, product: "p", quantity: 3)
        do {
            _ = try await gate.apply(.addGrant(AddGrant(account: "acme", amount: 1_000, effectiveAt: Instant(microsecondsSinceEpoch: 0))))
            Issue.record("a gate certificate granted credits")
        } catch {
            #expect(error.status == ProtocolStatus.forbidden.rawValue)
        }
        #expect(try await admin.balance(account: "acme").funds.pool == 7)

        // Strangers cannot connect: no certificate, one from another CA, an expired one.
        await expectRefused("no client certificate") { _ = try await server.client(retries: 0, tls: options(nil)) }
        await expectRefused("wrong CA") { _ = try await server.client(retries: 0, tls: options(foreign)) }
        await expectRefused("expired client certificate") { _ = try await server.client(retries: 0, tls: options(expired)) }
        // A certificate from the right CA that names nobody in the credentials gets in only
        // with a token of its own.
        do {
            _ = try await server.client(retries: 0, tls: options(stranger))
            Issue.record("an unknown certificate connected")
        } catch {
            #expect((error as? TollgateError)?.status == ProtocolStatus.unauthorized.rawValue)
            #expect("\(error)".contains("CN=stranger"))
        }
        let ops = try await server.client(token: "ops-token-0123456789abcdef", tls: options(stranger))
        #expect(ops.serverHello?.identity == "ops")
        await ops.close()

        // The three strangers, counted (other suites may add their own at the same time).
        #expect(try await Self.metric(failedSeries, port: server.adminPort) >= failedBefore + 3)
        await gate.close()
        await admin.close()
        try await server.stop()
    }

    @Test func optionalClientCertificatesStillAdmitTokens() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let billing = try await pki.issue("billing", commonName: "billing-service")
        let foreign = try await pki.issue("foreign", commonName: "billing-service", ca: "wrong-ca")
        let server = try await Self.start(
            pki, server: try await pki.issueServer(), clientCA: pki.caCertificate, clients: .optional, credentials: Self.meshCredentials)
        let withToken = try await server.client(token: "ops-token-0123456789abcdef", tls: TLSOptions(caFile: pki.caCertificate))
        #expect(withToken.serverHello?.identity == "ops")
        await withToken.close()
        let withCertificate = try await server.client(tls: TLSOptions(caFile: pki.caCertificate, certificateFile: billing.certificate, keyFile: billing.key))
        #expect(withCertificate.serverHello?.identity == "billing")
        await withCertificate.close()
        // A certificate that is presented must still chain to the client CA.
        await expectRefused("wrong CA, optional") {
            _ = try await server.client(
                retries: 0, tls: TLSOptions(caFile: pki.caCertificate, certificateFile: foreign.certificate, keyFile: foreign.key))
        }
        try await server.stop()
    }

    /// The subject of the certificate the server presents to a new connection, by `openssl s_client`.
    static func servedSubject(_ pki: TestPKI, port: Int, client: TestPKI.Pair? = nil) async throws -> String {
        var arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.caCertificate, "-verify_return_error", "-brief"]
        if let client { arguments += ["-cert", client.certificate, "-key", client.key] }
        let output = try await pki.openssl(arguments, input: "")
        return output.split(separator: "\n").first { $0.contains("Peer certificate:") }.map(String.init) ?? output
    }

    @Test func certificatesRotateWithoutDroppingConnections() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let first = try await pki.issueServer("first", commonName: "tollgated-first")
        let live = TestPKI.Pair(certificate: pki.directory + "/live.pem", key: pki.directory + "/live.key")
        try FileManager.default.copyItem(atPath: first.certificate, toPath: live.certificate)
        try FileManager.default.copyItem(atPath: first.key, toPath: live.key)
        let agent = try await pki.issue("agent", commonName: "billing-service")
        let server = try await Self.start(pki, server: live, clientCA: pki.caCertificate, credentials: Self.meshCredentials) {
            $0.reloadCheckSeconds = 1
        }
        let tls = TLSOptions(caFile: pki.caCertificate, certificateFile: agent.certificate, keyFile: agent.key)
        let open = try await server.client(tls: tls)
        _ = try await open.apply(.createAccount(CreateAccount(account: "acme")))
        #expect(try await Self.servedSubject(pki, port: server.port, client: agent).contains("tollgated-first"))

        // The mesh writes a new certificate and key; the server notices on its own.
        let second = try await pki.issueServer("second", commonName: "tollgated-second")
        try Self.replace(live, with: second)
        var subject = ""
        for _ in 0..<300 {  // until the new one is served; at most 30 s
            subject = try await Self.servedSubject(pki, port: server.port, client: agent)
            if subject.contains("tollgated-second") { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(subject.contains("tollgated-second"))
        // The connection opened before the rotation still works.
        _ = try await open.apply(.addMember(account: "acme", member: "ana"))
        try await open.ping()

        // A half-written rotation (a key that does not match) is refused; the last good
        // certificate stays in force.
        let third = try await pki.issueServer("third", commonName: "tollgated-third")
        try FileManager.default.removeItem(atPath: live.certificate)
        try FileManager.default.copyItem(atPath: third.certificate, toPath: live.certificate)
        let outcome = server.server.reload()
        #expect(!outcome.tlsChanged && outcome.errors.count == 1)
        #expect(try await Self.servedSubject(pki, port: server.port, client: agent).contains("tollgated-second"))
        let fresh = try await server.client(tls: tls)
        try await fresh.ping()
        await fresh.close()
        try await open.ping()
        await open.close()
        let metrics = try await RawHTTP.get(port: server.adminPort, path: "/metrics")
        #expect(metrics.contains(#"tollgate_reloads_total{what="tls",outcome="ok"}"#))
        #expect(metrics.contains(#"tollgate_reloads_total{what="tls",outcome="failed"}"#))
        try await server.stop()
    }

    static func replace(_ live: TestPKI.Pair, with pair: TestPKI.Pair) throws {
        // As a mesh agent does: write beside, then rename over.
        try FileManager.default.copyItem(atPath: pair.key, toPath: live.key + ".new")
        try FileManager.default.copyItem(atPath: pair.certificate, toPath: live.certificate + ".new")
        rename(live.key + ".new", live.key)
        rename(live.certificate + ".new", live.certificate)
    }

    /// The real tollgated: flags for TLS, mTLS and credentials, and SIGHUP to rotate.
    @Test func sighupRotatesTheCertificateOfTheRealServer() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let live = TestPKI.Pair(certificate: pki.directory + "/live.pem", key: pki.directory + "/live.key")
        try Self.replace(live, with: try await pki.issueServer("first", commonName: "tollgated-first"))
        let credentials = pki.directory + "/credentials.yaml"
        try Self.meshCredentials.write(toFile: credentials, atomically: true, encoding: .utf8)
        let agent = try await pki.issue("agent", commonName: "billing-service")
        let data = pki.directory + "/data"
        let port = try freePort()
        let process = try CrashTests.Process.start(
            data: data, port: port, mode: "none",
            arguments: [
                "--tls-cert", live.certificate, "--tls-key", live.key, "--tls-client-ca", pki.caCertificate, "--credentials", credentials,
            ],
            environment: ["TOLLGATE_RELOAD_CHECK_SECONDS": "0"])
        defer { process.terminate() }
        let tls = TLSOptions(caFile: pki.caCertificate, certificateFile: agent.certificate, keyFile: agent.key)
        var open: TollgateClient?
        // As soon as tollgated is up; at most a minute.
        for _ in 0..<2_400 where open == nil {
            open = try? await TollgateClient.connect(.init(port: port, retries: 0, tls: tls))
            if open == nil { try await Task.sleep(for: .milliseconds(25)) }
        }
        let client = try #require(open)
        #expect(client.serverHello?.identity == "billing")
        #expect(try await Self.servedSubject(pki, port: port, client: agent).contains("tollgated-first"))

        try Self.replace(live, with: try await pki.issueServer("second", commonName: "tollgated-second"))
        // Only SIGHUP reloads here (no periodic check): the old certificate until then.
        #expect(try await Self.servedSubject(pki, port: port, client: agent).contains("tollgated-first"))
        kill(process.pid, SIGHUP)
        var subject = ""
        for _ in 0..<600 {  // until the new one is served; at most 30 s
            subject = try await Self.servedSubject(pki, port: port, client: agent)
            if subject.contains("tollgated-second") { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(subject.contains("tollgated-second"))
        try await client.ping()
        _ = try await client.apply(.createAccount(CreateAccount(account: "acme")))
        await client.close()

        // The CLI, by flags and by environment variables.
        let cli = JournalCLITests.tollgate
        let byFlags = try await TestPKI.run(
            cli, ["ping", "--server", "127.0.0.1:\(port)", "--tls-ca", pki.caCertificate, "--tls-cert", agent.certificate, "--tls-key", agent.key])
        #expect(byFlags.contains("connected as billing (role admin)"), "\(byFlags)")
        var environment = ProcessInfo.processInfo.environment
        environment["TOLLGATE_SERVER"] = "localhost:\(port)"
        environment["TOLLGATE_TLS_CA"] = pki.caCertificate
        environment["TOLLGATE_TLS_CERT"] = agent.certificate
        environment["TOLLGATE_TLS_KEY"] = agent.key
        let byEnvironment = try await TestPKI.run(cli, ["balance", "acme", "--json"], environment: environment)
        #expect(byEnvironment.contains("\"account\" : \"acme\""), "\(byEnvironment)")
        // Without a client certificate the handshake is refused, and the CLI says so.
        do {
            try await TestPKI.run(cli, ["ping", "--server", "127.0.0.1:\(port)", "--tls-ca", pki.caCertificate])
            Issue.record("the CLI connected without a client certificate")
        } catch {
            #expect("\(error)".contains("TLS"), "\(error)")
        }
    }

    @Test func tls12OnlyWhenAllowed() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let pair = try await pki.issueServer()
        let strict = try await Self.start(pki, server: pair)
        await #expect(throws: (any Error).self) {
            try await pki.openssl(["s_client", "-connect", "127.0.0.1:\(strict.port)", "-CAfile", pki.caCertificate, "-tls1_2", "-brief"], input: "")
        }
        let output = try await pki.openssl(["s_client", "-connect", "127.0.0.1:\(strict.port)", "-CAfile", pki.caCertificate, "-tls1_3", "-brief"], input: "")
        #expect(output.contains("TLSv1.3"))
        try await strict.stop()

        let relaxed = try await Self.start(pki, server: pair) { $0.tlsMinimumVersion = .tls12 }
        let twelve = try await pki.openssl(["s_client", "-connect", "127.0.0.1:\(relaxed.port)", "-CAfile", pki.caCertificate, "-tls1_2", "-brief"], input: "")
        #expect(twelve.contains("TLSv1.2"))
        try await relaxed.stop()
    }

    /// A client built on OpenSSL (Python's `ssl` module), written from proto/PROTOCOL.md alone:
    /// mTLS handshake, HELLO with a token, PING.
    @Test func anOpenSSLClientCompletesTheHandshakeAndAPing() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let agent = try await pki.issue("agent", commonName: "agent-7", subjectAltNames: ["URI:spiffe://test.tollgate/ns/agents/sa/runtime"])
        let server = try await Self.start(pki, server: try await pki.issueServer(), clientCA: pki.caCertificate, credentials: Self.meshCredentials)
        let script = """
            import socket, ssl, struct, sys
            port, ca, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
            context.load_cert_chain(cert, key)
            def string(text):
                data = text.encode()
                return struct.pack(">H", len(data)) + data
            def frame(opcode, request_id, body):
                return b"TG" + struct.pack(">BBHHII", 1, opcode, 0, 0, request_id, len(body)) + body
            def read_exactly(stream, count):
                data = b""
                while len(data) < count:
                    chunk = stream.recv(count - len(data))
                    if not chunk:
                        raise SystemExit("closed")
                    data += chunk
                return data
            def read_frame(stream):
                header = read_exactly(stream, 16)
                _, _, opcode, flags, status, request_id, length = struct.unpack(">2sBBHHII", header)
                return opcode, flags, status, request_id, read_exactly(stream, length)
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as stream:
                    stream.sendall(frame(0x01, 1, bytes([1, 1]) + string("python-ssl") + string("")))
                    opcode, flags, status, request_id, body = read_frame(stream)
                    assert (opcode, flags, status, request_id) == (0x01, 1, 0, 1), (opcode, flags, status, request_id)
                    offset = 1
                    (length,) = struct.unpack_from(">H", body, offset); offset += 2 + length   # serverName
                    offset += 4 + 2 + 2                                                          # limits
                    (length,) = struct.unpack_from(">H", body, offset); offset += 2
                    identity = body[offset:offset + length].decode(); offset += length
                    role = body[offset]
                    stream.sendall(frame(0x02, 2, b""))
                    opcode, flags, status, request_id, body = read_frame(stream)
                    assert (opcode, status, request_id, body) == (0x02, 0, 2, b""), (opcode, status, request_id, body)
                    print(f"{stream.version()} identity={identity} role={role} pong")
            """
        let output = try await TestPKI.run(
            "/usr/bin/env", ["python3", "-c", script, String(server.port), pki.caCertificate, agent.certificate, agent.key])
        #expect(output.contains("TLSv1.3 identity=agent-runtime role=2 pong"), "\(output)")
        try await server.stop()
    }

    @Test func certificateNamesAreReadFromDER() async throws {
        let pki = try await TestPKI.make()
        defer { pki.remove() }
        let pair = try await pki.issue(
            "names", commonName: "agent-7", subjectAltNames: ["DNS:agent.example", "URI:spiffe://a/b", "URI:https://c.example/d", "IP:10.0.0.1"])
        let names = try #require(CertificateNames.parse(der: try await pki.der(pair.certificate)))
        #expect(names.commonName == "agent-7")
        #expect(names.uris == ["spiffe://a/b", "https://c.example/d"])
        #expect(names.candidates == ["spiffe://a/b", "https://c.example/d", "agent-7"])
        let plain = try #require(CertificateNames.parse(der: try await pki.der(pki.caCertificate)))
        #expect(plain.commonName == "Tollgate Test CA" && plain.uris.isEmpty)

        // Damaged bytes never trap: every truncation and random corruption reads as nothing
        // or as some names, never a crash.
        // A CPU loop: on a thread of its own, not the test pool's.
        let der = try await pki.der(pair.certificate)
        await OffPool.cpu("damaged-der") {
            for length in 0..<der.count { _ = CertificateNames.parse(der: Array(der.prefix(length))) }
            var generator = SystemRandomNumberGenerator()
            for _ in 0..<2_000 {
                var damaged = der
                for _ in 0..<3 { damaged[Int.random(in: 0..<damaged.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator) }
                _ = CertificateNames.parse(der: damaged)
            }
        }
        #expect(CertificateNames.parse(der: []) == nil)
    }
}
