import Foundation
import Testing
import TollgateClient
import TollgateLedger
import TollgateServer
import TollgateWire

/// The read API on the admin port, against a real server: every read agrees with what the gate
/// protocol answers, credentials and scopes are enforced, and bad requests get JSON errors.
@Suite(.serialized) struct ReadAPITests {
    static func int(_ value: Any?) -> Int64? { (value as? NSNumber)?.int64Value }

    /// acme (the Team plan, ana capped at 20) and globex (50 credits), with spends, a refusal,
    /// a partial commit and an open hold.
    static func populated() async throws -> (TestServer, TollgateClient) {
        let server = try await TestServer.start()
        let client = try await server.client()
        try await client.setUpTeamPlan()
        _ = try await client.apply(.setMemberCap(account: "acme", member: "ana", limit: 20))
        _ = try await client.apply(.createAccount(CreateAccount(account: "globex")))
        _ = try await client.apply(.addGrant(AddGrant(account: "globex", amount: 50, effectiveAt: Instant(microsecondsSinceEpoch: 0))))
        _ = try await client.spend(account: "acme", member: "ben", product: "ai.summary", quantity: 2)  // 14
        _ = try await client.spend(account: "acme", member: "ana", product: "ai.summary", quantity: 1)  // 7
        await #expect(throws: TollgateError.self) {
            _ = try await client.spend(account: "acme", member: "ana", product: "ai.assistant", quantity: 2)  // 24 > 13 left under the cap
        }
        let hold = try await client.reserve(account: "acme", member: "cy", product: "ai.assistant", quantity: 2)  // 24 held
        _ = try await client.commit(account: "acme", hold: hold.hold!, amount: .credits(10), final: false)  // 10 consumed, 14 still held
        return (server, client)
    }

    @Test func readsAgreeWithTheLedger() async throws {
        let (server, client) = try await Self.populated()
        defer { Task { await client.close(); try? await server.stop() } }
        let port = server.adminPort

        let list = try await RawHTTP.request(port: port, path: "/api/v1/accounts")
        #expect(list.status == 200)
        #expect(list.header("Content-Type") == "application/json")
        let accounts = try #require(list.json["accounts"] as? [[String: Any]])
        #expect(accounts.map { $0["account"] as? String } == ["acme", "globex"])
        let acme = try await client.balance(account: "acme")
        #expect(Self.int(accounts[0]["balance"]) == acme.funds.balance)
        #expect(Self.int(accounts[0]["held"]) == 14 && Self.int(accounts[0]["consumed"]) == 31 && Self.int(accounts[0]["openHolds"]) == 1)
        #expect(Self.int(accounts[1]["balance"]) == 50)

        // Pages: one account at a time, then the end.
        let first = try await RawHTTP.request(port: port, path: "/api/v1/accounts?limit=1").json
        #expect((first["accounts"] as? [[String: Any]])?.count == 1 && first["next"] as? String == "acme")
        let second = try await RawHTTP.request(port: port, path: "/api/v1/accounts?limit=1&after=acme").json
        #expect((second["accounts"] as? [[String: Any]])?.first?["account"] as? String == "globex")
        #expect(second["next"] is NSNull)

        // A member's balance: the same levels and headroom the protocol reports.
        let member = try await RawHTTP.request(port: port, path: "/api/v1/accounts/acme/balance?member=ana").json
        let ana = try await client.balance(account: "acme", member: "ana")
        let levels = try #require(member["levels"] as? [[String: Any]])
        #expect(levels.map { $0["level"] as? String } == ana.levels.map { $0.level.name })
        #expect(levels.map { Self.int($0["headroom"]) } == ana.levels.map { $0.headroom })
        #expect(Self.int((member["headroom"] as? [String: Any])?["member"]) == ana.headroom.member)
        #expect(Self.int((member["burn"] as? [String: Any])?["lastMinute"]) == 7)

        let grants = try #require(await RawHTTP.request(port: port, path: "/api/v1/accounts/acme/grants").json["grants"] as? [[String: Any]])
        #expect(grants.map { Self.int($0["amount"]) } == [400, 1_000])
        #expect(grants.map { $0["source"] as? String } == ["recurring", "top-up"])
        #expect(grants.map { Self.int($0["consumed"]) }.compactMap { $0 }.reduce(0, +) == 31)

        // Recent consumption, newest first: the commit (with the hold's product), then the spends.
        let consumption = try await RawHTTP.request(port: port, path: "/api/v1/accounts/acme/consumption").json
        let recent = try #require(consumption["recent"] as? [[String: Any]])
        #expect(recent.map { Self.int($0["credits"]) } == [10, 7, 14])
        #expect(recent.map { $0["operation"] as? String } == ["commit", "spend", "spend"])
        #expect(recent.first?["product"] as? String == "ai.assistant" && recent.first?["member"] as? String == "cy")
        let burn = try #require(consumption["burn"] as? [String: Any])
        #expect(Self.int(burn["lastMinute"]) == 31)
        #expect(((burn["minuteBuckets"] as? [[Any]]) ?? []).compactMap { Self.int($0[1]) }.reduce(0, +) == 31)

        let refusals = try await RawHTTP.request(port: port, path: "/api/v1/accounts/acme/refusals").json
        #expect(refusals["byReason"] as? [String: Int] == ["memberCap": 1])
        let refusal = try #require((refusals["recent"] as? [[String: Any]])?.first)
        #expect(refusal["member"] as? String == "ana" && refusal["level"] as? String == "member" && Self.int(refusal["quantity"]) == 2)

        // The overview: the projection is the balance over the last minute's rate.
        let overview = try await RawHTTP.request(port: port, path: "/api/v1/accounts/acme/overview").json
        let depletion = try #require(overview["depletion"] as? [String: Any])
        #expect(depletion["state"] as? String == "projected")
        #expect(Self.int(depletion["seconds"]) == acme.funds.balance * 60 / 31)
        #expect(((overview["history"] as? [String: Any])?["samples"] as? [[Any]])?.count == 1)
        let server_ = try await RawHTTP.request(port: port, path: "/api/v1/server").json
        #expect(server_["watchedAccounts"] as? [String] == ["acme"])
        #expect(Self.int(server_["accounts"]) == 2 && Self.int(server_["openHolds"]) == 1)
    }

    @Test func watchedAccountsAreSampledOverTime() async throws {
        let server = try await TestServer.start { $0.dashboardAccountsMax = 1 }
        let client = try await server.client()
        defer { Task { await client.close(); try? await server.stop() } }
        try await client.setUpTeamPlan()
        try await client.setUpTeamPlan(account: "hooli")
        let port = server.adminPort
        _ = try await RawHTTP.request(port: port, path: "/api/v1/accounts/acme/overview")
        _ = try await client.spend(account: "acme", member: "ben", product: "ai.summary", quantity: 10)
        let expected = try await client.balance(account: "acme").funds.balance
        var samples: [BalanceHistory.Sample] = []
        for _ in 0..<300 where samples.last?.balance != expected {
            try await Task.sleep(for: .milliseconds(100))
            samples = server.server.history.samples(of: "acme")
        }
        #expect(samples.first?.balance == 1_400 && samples.last?.balance == expected && samples.last?.consumed == 70)
        let since = try #require(samples.first).at.microsecondsSinceEpoch / 1_000
        let newer = try await RawHTTP.request(port: port, path: "/api/v1/accounts/acme/overview?since=\(since)").json
        let rows = try #require((newer["history"] as? [String: Any])?["samples"] as? [[Any]])
        #expect(rows.count >= samples.count - 1 && rows.allSatisfy { (Self.int($0[0]) ?? 0) > since })
        // One account at most: watching hooli lets acme go.
        _ = try await RawHTTP.request(port: port, path: "/api/v1/accounts/hooli/overview")
        #expect(try await RawHTTP.request(port: port, path: "/api/v1/server").json["watchedAccounts"] as? [String] == ["hooli"])
    }

    @Test func credentialsRolesAndScopesAreEnforced() async throws {
        let yaml = """
            identities:
              - {name: ops, token: ops-token-0123456789, role: admin}
              - {name: acme-viewer, token: viewer-token-0123456789, role: read, accounts: [acme]}
              - {name: agents, token: agent-token-0123456789, role: gate, accounts: "*"}
            """
        let server = try await TestServer.start { $0.credentials = try! Credentials.parse(yaml: yaml, source: "test") }
        defer { Task { try? await server.stop() } }
        let admin = try await server.client(token: "ops-token-0123456789")
        try await admin.setUpTeamPlan()
        _ = try await admin.apply(.createAccount(CreateAccount(account: "globex")))
        await admin.close()
        let port = server.adminPort

        let none = try await RawHTTP.request(port: port, path: "/api/v1/accounts")
        #expect(none.status == 401 && none.header("WWW-Authenticate")?.hasPrefix("Bearer") == true)
        #expect((none.json["error"] as? String)?.contains("credential") == true)
        #expect(try await RawHTTP.request(port: port, path: "/api/v1/accounts", token: "wrong-token-0123456789").status == 401)
        let gate = try await RawHTTP.request(port: port, path: "/api/v1/accounts", token: "agent-token-0123456789")
        #expect(gate.status == 403 && (gate.json["error"] as? String)?.contains("gate role") == true)

        let viewer = "viewer-token-0123456789"
        let seen = try await RawHTTP.request(port: port, path: "/api/v1/accounts", token: viewer).json["accounts"] as? [[String: Any]]
        #expect(seen?.map { $0["account"] as? String } == ["acme"])
        #expect(try await RawHTTP.request(port: port, path: "/api/v1/accounts?after=globex", token: viewer).status == 400)
        #expect(try await RawHTTP.request(port: port, path: "/api/v1/accounts?after=acme", token: viewer).status == 200)
        #expect(try await RawHTTP.request(port: port, path: "/api/v1/accounts/acme/balance", token: viewer).status == 200)
        for path in ["/api/v1/accounts/globex", "/api/v1/accounts/globex/overview", "/api/v1/accounts/globex/grants"] {
            #expect(try await RawHTTP.request(port: port, path: path, token: viewer).status == 403)
        }
        let all = try await RawHTTP.request(port: port, path: "/api/v1/accounts", token: "ops-token-0123456789").json["accounts"] as? [[String: Any]]
        #expect(all?.count == 2)
        // The page itself holds no data and needs no credential; the refusals are counted.
        #expect(try await RawHTTP.request(port: port, path: "/dashboard").status == 200)
        let metrics = try await RawHTTP.get(port: port, path: "/metrics")
        #expect(metrics.contains(#"tollgate_access_refusals_total{status="forbidden",role="gate",reason="role"}"#))
        #expect(metrics.contains(#"tollgate_access_refusals_total{status="forbidden",role="read",reason="scope"}"#))
    }

    @Test func badRequestsGetJSONErrors() async throws {
        let server = try await TestServer.start()
        let client = try await server.client()
        defer { Task { await client.close(); try? await server.stop() } }
        _ = try await client.apply(.createAccount(CreateAccount(account: "team/1%")))
        let port = server.adminPort
        let cases: [(String, String, Int)] = [
            ("GET", "/api/v1/nothing", 404), ("GET", "/api/v1/accounts/nobody", 404), ("GET", "/api/v1/accounts/nobody/overview", 404),
            ("GET", "/api/v1/accounts?limit=0", 400), ("GET", "/api/v1/accounts?limit=many", 400), ("GET", "/api/v1/accounts?after=nobody", 400),
            ("GET", "/api/v1/accounts/team%2F1%25/balance?member=ghost", 404), ("POST", "/api/v1/accounts", 405),
            ("GET", "/api/v1/accounts/team%2F1%25/overview?since=-5", 400), ("GET", "/api/v1/accounts/%zz%/grants", 404),
            ("GET", "/api/v1/" + String(repeating: "x/", count: 500), 404),
        ]
        for (method, path, status) in cases {
            let reply = try await RawHTTP.request(port: port, path: path, method: method)
            #expect(reply.status == status, "\(method) \(path)")
            #expect(Self.int(reply.json["status"]) == Int64(status) && reply.json["error"] is String, "\(method) \(path): \(reply.body)")
        }
        // An id with a slash and a percent sign, escaped in the path.
        let escaped = try await RawHTTP.request(port: port, path: "/api/v1/accounts/team%2F1%25")
        #expect(escaped.status == 200 && (escaped.json["account"] as? [String: Any])?["account"] as? String == "team/1%")
        #expect(try await RawHTTP.request(port: port, path: "/").header("Location") == "/dashboard")
        // The server still answers the gate.
        #expect(try await client.balance(account: "team/1%").account == "team/1%")
    }
}

@Suite struct LedgerJSONTests {
    /// The read API's own JSON writer says what JSONSerialization reads back.
    @Test func writesWhatAParserReadsBack() throws {
        let member: String? = "ana"
        let none: Int64? = nil
        let object: [String: Any] = [
            "text": "quote \" backslash \\ newline \n tab \t bell \u{07} slash / é 🙂", "int": Int64.min, "max": Int64.max, "small": Int32(-7),
            "unsigned": UInt64.max, "plain": 42, "yes": true, "no": false, "null": NSNull(), "member": member as Any, "none": none as Any,
            "list": [Int64(1), "two", [Int64(3)], ["four": NSNull()]] as [Any], "pairs": [[Int64(1), Int64(2)]], "empty": [String: Any](), "nothing": [Any](),
        ]
        let data = LedgerJSON.data(object)
        let text = String(decoding: data, as: UTF8.self)
        let parsed = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(parsed["text"] as? String == object["text"] as? String)
        #expect((parsed["int"] as? NSNumber)?.int64Value == Int64.min && (parsed["max"] as? NSNumber)?.int64Value == Int64.max)
        #expect((parsed["unsigned"] as? NSNumber)?.uint64Value == UInt64.max && (parsed["small"] as? NSNumber)?.intValue == -7)
        #expect(parsed["yes"] as? Bool == true && parsed["no"] as? Bool == false && parsed["null"] is NSNull && parsed["none"] is NSNull)
        #expect(parsed["member"] as? String == "ana")
        #expect(text.contains(#""yes":true"#) && text.contains(#""pairs":[[1,2]]"#) && text.contains(#""empty":{}"#))
        // Keys sorted, as before.
        #expect(text.hasPrefix(#"{"empty":{},"int":"#))
    }
}
