import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import Testing
import TollgateClient
import TollgateLedger
import TollgateLedgerTestSupport
import TollgateServer
import TollgateWire

/// A webhook receiver: records each POST body answered 200, answering with the statuses in
/// `failFirst` first.
final class WebhookReceiver: Sendable {
    final class Record: Sendable {
        let bodies = Mutex<[String]>([])
        let statuses: Mutex<[Int]>

        init(_ statuses: [Int]) {
            self.statuses = Mutex(statuses)
        }
    }

    let record: Record
    let channel: any Channel
    var port: Int { channel.localAddress!.port! }

    init(failFirst statuses: [Int] = []) async throws {
        let record = Record(statuses)
        self.record = record
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(Handler(record: record))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    var received: [[String: Any]] {
        record.bodies.withLock { $0 }.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func close() async { try? await channel.close() }

    final class Handler: ChannelInboundHandler, Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart
        let record: Record
        let body = Mutex("")

        init(record: Record) {
            self.record = record
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head: body.withLock { $0 = "" }
            case .body(let buffer): body.withLock { $0 += String(buffer: buffer) }
            case .end:
                let status = record.statuses.withLock { $0.isEmpty ? 200 : $0.removeFirst() }
                if status == 200 { record.bodies.withLock { $0.append(body.withLock { $0 }) } }
                var head = HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status))
                head.headers.add(name: "Content-Length", value: "0")
                context.write(wrapOutboundOut(.head(head)), promise: nil)
                let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in loopBound.value.close(promise: nil) }
            }
        }
    }
}

@Suite(.serialized) struct EventTests {
    func setUp(_ client: TollgateClient, account: String = "acme") async throws {
        _ = try await client.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch))
        _ = try await client.apply(.createAccount(CreateAccount(account: account)))
        _ = try await client.apply(.addGrant(AddGrant(account: account, amount: 100, effectiveAt: .epoch)))
    }

    /// The first `count` events, as soon as they arrive; what came within `seconds` if fewer did
    /// (a bound only a failure reaches).
    func collect(_ events: AsyncStream<LedgerEvent>, count: Int, seconds: Int = 30) async -> [LedgerEvent] {
        await withTaskGroup(of: [LedgerEvent].self) { group in
            group.addTask {
                var seen: [LedgerEvent] = []
                for await event in events {
                    seen.append(event)
                    if seen.count == count { break }
                }
                return seen
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(seconds))
                return []
            }
            let first = await group.next() ?? []
            group.cancelAll()
            return first
        }
    }

    @Test func subscribersHearAlertsAndRechargesAndTheLogKeepsThem() async throws {
        let data = NSTemporaryDirectory() + "tollgate-events-\(UUID().uuidString)"
        let server = try await TestServer.start { $0.dataDirectory = data }
        let admin = try await server.client()
        try await setUp(admin)
        let (next, stream) = try await admin.subscribe(account: "acme")
        #expect(next == 1)
        _ = try await admin.apply(.setAlert(account: "acme", rule: AlertRule(id: "low", threshold: .credits(10))))
        _ = try await admin.apply(.setAutoRecharge(account: "acme", rule: AutoRecharge(below: 5, amount: 50, maxPerPeriod: 1)))
        _ = try await admin.spend(account: "acme", member: nil, product: "p", quantity: 91)
        _ = try await admin.spend(account: "acme", member: nil, product: "p", quantity: 6)
        let events = await collect(stream, count: 2)
        #expect(events.map(\.sequence) == [1, 2])
        #expect(events.first?.kind == .alert(id: "low", threshold: 10, balance: 9))
        guard case .recharged(_, let amount, let balance) = events.last?.kind else { Issue.record("\(events)"); return }
        #expect(amount == 50 && balance == 53)

        // A late subscriber resumes from a sequence.
        let (_, resumed) = try await admin.subscribe(after: 1)
        #expect(await collect(resumed, count: 1).map(\.sequence) == [2])
        // The largest `after` a client can send (2^64 − 1) is past every event: nothing is
        // replayed, and the server goes on serving (it once trapped adding 1 to it).
        let (_, past) = try await admin.subscribe(after: .max)
        try await admin.ping()
        _ = past
        await admin.close()
        try await server.stop()

        let lines = try String(contentsOfFile: data + "/events/events.log", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2)
        #expect(lines[0].contains(#""id":"tollgate-event-1""#) && lines[0].contains(#""type":"alert""#) && lines[0].contains(#""balance":9"#))
        #expect(lines[1].contains(#""type":"recharged""#) && lines[1].contains(#""amount":50"#))

        // A restart replays the journal, which produces the same two events: the log does not
        // take them twice, and the next event carries the next number.
        let again = try await TestServer.start { $0.dataDirectory = data }
        let client = try await again.client()
        _ = try await client.apply(.setAlert(account: "acme", rule: AlertRule(id: "empty", threshold: .depleted)))
        _ = try await client.spend(account: "acme", member: nil, product: "p", quantity: 53)
        await client.close()
        try await again.stop()
        let after = try String(contentsOfFile: data + "/events/events.log", encoding: .utf8).split(separator: "\n")
        // (The recharge re-armed "low", so it fires again on the way to zero.)
        #expect(after.count == 4, "\(after)")
        #expect(after[2].contains(#""sequence":3"#) && after[2].contains(#""alert":"low""#) && after[2].contains(#""balance":0"#))
        #expect(after[3].contains(#""sequence":4"#) && after[3].contains(#""type":"depleted""#))
        try? FileManager.default.removeItem(atPath: data)
    }

    @Test func theWebhookGetsEveryEventInOrderThroughFailuresAndRestarts() async throws {
        let receiver = try await WebhookReceiver(failFirst: [500, 503])
        let data = NSTemporaryDirectory() + "tollgate-webhook-\(UUID().uuidString)"
        let url = "http://127.0.0.1:\(receiver.port)/hooks/tollgate"
        let server = try await TestServer.start {
            $0.dataDirectory = data
            $0.webhookURL = url
        }
        let admin = try await server.client()
        try await setUp(admin)
        _ = try await admin.apply(.setAlert(account: "acme", rule: AlertRule(id: "low", threshold: .credits(50))))
        _ = try await admin.apply(.setAlert(account: "acme", rule: AlertRule(id: "empty", threshold: .depleted)))
        _ = try await admin.spend(account: "acme", member: nil, product: "p", quantity: 60)
        _ = try await admin.spend(account: "acme", member: nil, product: "p", quantity: 40)
        for _ in 0..<600 where receiver.received.count < 2 { try await Task.sleep(for: .milliseconds(50)) }
        let delivered = receiver.received
        #expect(delivered.map { $0["id"] as? String } == ["tollgate-event-1", "tollgate-event-2"])
        #expect(delivered.map { $0["type"] as? String } == ["alert", "depleted"])
        #expect(delivered.first?["account"] as? String == "acme" && (delivered.first?["threshold"] as? Int) == 50)
        await admin.close()
        try await server.stop()
        #expect(try String(contentsOfFile: data + "/events/webhook.cursor", encoding: .utf8).hasPrefix("2"))

        // Down while an event happens, then up again: delivered once the receiver answers,
        // and nothing delivered before is sent again.
        await receiver.close()
        let later = try await WebhookReceiver()
        let again = try await TestServer.start {
            $0.dataDirectory = data
            $0.webhookURL = "http://127.0.0.1:\(later.port)/hooks/tollgate"
        }
        let client = try await again.client()
        _ = try await client.apply(.addGrant(AddGrant(account: "acme", amount: 100, effectiveAt: .epoch)))
        _ = try await client.spend(account: "acme", member: nil, product: "p", quantity: 60)
        for _ in 0..<600 where later.received.count < 1 { try await Task.sleep(for: .milliseconds(50)) }
        try await Task.sleep(for: .milliseconds(200))
        #expect(later.received.map { $0["sequence"] as? Int } == [3])
        await client.close()
        try await again.stop()
        await later.close()
        try? FileManager.default.removeItem(atPath: data)
    }

    @Test func onlyReadersAndAdminsSubscribeAndOnlyToTheirAccounts() async throws {
        let file = NSTemporaryDirectory() + "tollgate-credentials-\(UUID().uuidString).yaml"
        try Tokens.credentials.write(toFile: file, atomically: true, encoding: .utf8)
        let server = try await TestServer.start {
            $0.credentials = nil
            $0.credentialsFile = file
        }
        let gate = try await server.client(token: Tokens.gate)
        let reader = try await server.client(token: Tokens.read)
        for (client, account) in [(gate, "acme"), (reader, "globex"), (reader, nil)] as [(TollgateClient, String?)] {
            do {
                _ = try await client.subscribe(account: account)
                Issue.record("subscribed to \(account ?? "everything")")
            } catch {
                guard case .server(let wire) = error else { Issue.record("\(error)"); continue }
                #expect(wire.status == .forbidden)
            }
        }
        _ = try await reader.subscribe(account: "acme")
        await gate.close()
        await reader.close()
        try await server.stop()
    }

    /// SUBSCRIBE without `after` while events are being decided: the stream starts exactly at
    /// the sequence its answer names and misses none after it, and sends none twice.
    @Test func aSubscriptionMissesNothingDecidedWhileItOpens() async throws {
        let server = try await TestServer.start()
        let admin = try await server.client()
        try await setUp(admin)
        _ = try await admin.apply(.addGrant(AddGrant(account: "acme", amount: 1_000_000, effectiveAt: .epoch)))
        // The balance stays below the recharge threshold: every spend is followed by a
        // recharge, an event each.
        _ = try await admin.apply(.setAutoRecharge(account: "acme", rule: AutoRecharge(below: 2_000_000, amount: 1, maxPerPeriod: 10_000)))
        let started = Mutex(0)
        let spender = Task {
            let gate = try await server.client()
            for index in 0..<400 {
                _ = try await gate.spend(account: "acme", member: nil, product: "p", quantity: 1)
                started.withLock { $0 = index }
            }
            await gate.close()
        }
        // Subscribe while the spends (and their events) are going on.
        while started.withLock({ $0 }) < 100 { try await Task.sleep(for: .milliseconds(1)) }
        let (next, stream) = try await admin.subscribe()
        try await spender.value
        let expected = Int(server.server.service.nextEventSequence - next)
        if expected > 0 {
            let events = await collect(stream, count: expected)
            #expect(events.map(\.sequence) == Array(next..<next + UInt64(expected)))
        }
        await admin.close()
        try await server.stop()
    }

    /// A failed write or fsync of the event log does not count as logged: the events are kept
    /// and written once the disk works, each once, and checkpoints wait for them.
    @Test func aFailingEventLogKeepsItsEventsUntilTheyAreWritten() async throws {
        let data = NSTemporaryDirectory() + "tollgate-events-\(UUID().uuidString)"
        let files = FaultyFiles()
        let server = try await TestServer.start(eventLogFiles: files) { $0.dataDirectory = data; $0.checkpointIntervalSeconds = 0 }
        let admin = try await server.client()
        try await setUp(admin)
        _ = try await admin.apply(.setAlert(account: "acme", rule: AlertRule(id: "low", threshold: .credits(10))))
        let (_, stream) = try await admin.subscribe(account: "acme")
        files.set(failing: true)
        _ = try await admin.spend(account: "acme", member: nil, product: "p", quantity: 91)
        // Subscribers hear it at once; the log does not have it, and says so.
        #expect(await collect(stream, count: 1).map(\.sequence) == [1])
        #expect(server.server.events.lastLogged == 0)
        let postponed = await OffPool.blocking("checkpoint") { () -> Bool in
            do {
                try server.server.writeCheckpoint()
                return false
            } catch {
                return "\(error)".contains("the event log is behind")
            }
        }
        #expect(postponed)
        files.set(failing: false)
        for _ in 0..<3_000 where server.server.events.lastLogged < 1 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(server.server.events.lastLogged == 1)
        await admin.close()
        try await server.stop()
        let lines = try String(contentsOfFile: data + "/events/events.log", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 1 && lines[0].contains(#""sequence":1"#))
        try? FileManager.default.removeItem(atPath: data)
    }
}

@Suite struct PeriodCatchUpTests {
    /// A server that was down across two period boundaries issues (and expires) each missed
    /// period's credits at start, and serves the current period's.
    @Test func aServerDownAcrossBoundariesCatchesUpAtStart() async throws {
        let data = NSTemporaryDirectory() + "tollgate-catch-up-\(UUID().uuidString)"
        let server = try await TestServer.start { $0.dataDirectory = data }
        let admin = try await server.client()
        _ = try await admin.apply(.setRate(product: "p", creditsPerUnit: 1, effectiveAt: .epoch))
        _ = try await admin.apply(.definePlan(Plan(name: "team", subscription: Subscription(creditsPerSeat: 100))))
        _ = try await admin.apply(.provision(Provision(account: "acme", plan: "team", seats: 4)))
        _ = try await admin.spend(account: "acme", member: nil, product: "p", quantity: 150)
        let before = try await admin.balance(account: "acme")
        await admin.close()
        try await server.stop()

        // 65 days later: two boundaries passed (two months are at most 62 days).
        let later = try await TestServer.start {
            $0.dataDirectory = data
            $0.clockOffsetSeconds = 65 * 86_400
        }
        let client = try await later.client()
        let after = try await client.balance(account: "acme")
        #expect(after.funds.pool == 400)
        #expect(after.subscription!.periodStart > before.periodEnd)
        #expect(after.subscription!.periodStart <= after.at && after.at < after.subscription!.periodEnd)
        let totals = later.server.service.snapshot.creditTotals()
        #expect(totals.granted == 3 * 400)
        #expect(totals.consumed == 150 && totals.expired == 250 + 400 && totals.available == 400)
        await client.close()
        try await later.stop()
        try? FileManager.default.removeItem(atPath: data)
    }
}
