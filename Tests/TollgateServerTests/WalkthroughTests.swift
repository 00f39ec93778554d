import Foundation
import Testing

/// Runs examples/walkthrough.sh (both variants) against the real tollgated and checks every
/// number it shows. The prorated seat depends on the length of the month it runs in, so the
/// expected figures are computed from the period the server reports.
@Suite(.serialized) struct WalkthroughTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    struct Run {
        let directory: String

        func balance(_ name: String) throws -> [String: Any] {
            let data = try Data(contentsOf: URL(fileURLWithPath: "\(directory)/\(name).json"))
            return try JSONSerialization.jsonObject(with: data) as! [String: Any]
        }

        func text(_ name: String) throws -> String {
            try String(contentsOfFile: "\(directory)/\(name)", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        }

        var events: [[String: Any]] {
            ((try? String(contentsOfFile: "\(directory)/events.jsonl", encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }
    }

    func run(_ variant: String) async throws -> Run {
        let directory = NSTemporaryDirectory() + "tollgate-walkthrough-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var environment = ProcessInfo.processInfo.environment
        environment["TOLLGATE_WALKTHROUGH_OUT"] = directory
        environment["TOLLGATE_BIN"] = Self.root.appendingPathComponent(".build/debug").path
        environment["TOLLGATE_WALKTHROUGH_PORT"] = String(try freePort())
        try await TestPKI.run("/bin/bash", [Self.root.appendingPathComponent("examples/walkthrough.sh").path, variant], environment: environment)
        return Run(directory: directory)
    }

    func pool(_ balance: [String: Any]) -> Int { (balance["funds"] as! [String: Any])["pool"] as! Int }
    func member(_ balance: [String: Any]) -> Int { (balance["funds"] as! [String: Any])["member"] as! Int }
    func grants(_ balance: [String: Any]) -> [[String: Any]] { balance["grants"] as! [[String: Any]] }

    /// Days in the period, and the prorated credits of a seat added two days in: 100 × days
    /// left (the day of the change counted whole) / days.
    func prorated(_ balance: [String: Any]) throws -> Int {
        let subscription = try #require(balance["subscription"] as? [String: Any])
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let start = try #require(formatter.date(from: subscription["periodStart"] as! String))
        let end = try #require(formatter.date(from: subscription["periodEnd"] as! String))
        let days = Int((end.timeIntervalSince(start) / 86_400).rounded(.up))
        return 100 * (days - 2) / days
    }

    @Test func theTeamPlan() async throws {
        let run = try await run("team")
        // Day 1: 4 seats × 100 pooled, plus the 1,000 top-up drawn after them.
        let day1 = try run.balance("day1")
        #expect(pool(day1) == 1_400)
        let included = grants(day1).filter { $0["source"] as? String == "recurring" }
        #expect(included.map { $0["amount"] as! Int } == [400])
        #expect(grants(day1).first { $0["source"] as? String == "top-up" }?["priority"] as? Int == 100)
        // ana's assistant call: 12 credits from the included ones.
        let after = try run.balance("day1-after")
        #expect(grants(after).first { $0["source"] as? String == "recurring" }?["available"] as? Int == 388)
        #expect(grants(after).first { $0["source"] as? String == "top-up" }?["available"] as? Int == 1_000)
        // Day 3: the fifth seat brings its share of the month.
        let day3 = try run.balance("day3")
        let seat = try prorated(day3)
        #expect((day3["subscription"] as? [String: Any])?["seats"] as? Int == 5)
        #expect(grants(day3).filter { $0["source"] as? String == "recurring" }.map { $0["amount"] as! Int }.sorted() == [seat, 400].sorted())
        #expect(pool(day3) == 388 + seat + 1_000)
        // 480 credits by eve come from the included credits only.
        let spent = try run.balance("spent")
        let includedLeft = 388 + seat - 480
        #expect(includedLeft >= 0)
        #expect(grants(spent).first { $0["source"] as? String == "top-up" }?["available"] as? Int == 1_000)
        #expect(pool(spent) == includedLeft + 1_000)
        // Then summaries (7) until the gate refuses: exit status 3.
        let total = includedLeft + 1_000
        #expect(Int(try run.text("summaries")) == total / 7)
        #expect(try run.text("refusal") == "3")
        #expect(pool(try run.balance("end")) == total % 7)
        // The alert fired once, the first time 10 or fewer were left; depletion only at zero.
        let balanceAtAlert = total - 7 * Int((Double(total - 10) / 7).rounded(.up))
        let events = run.events
        #expect(events.first?["type"] as? String == "alert" && events.first?["alert"] as? String == "low")
        #expect(events.first?["balance"] as? Int == balanceAtAlert)
        #expect(events.count == (total % 7 == 0 ? 2 : 1))
        try? FileManager.default.removeItem(atPath: run.directory)
    }

    @Test func theSeatScopedVariant() async throws {
        let run = try await run("seat-scoped")
        // Day 1: 100 of their own for each of 4 members, and the pooled add-on.
        let day1 = try run.balance("day1")
        #expect(pool(day1) == 1_000)
        #expect((day1["subscription"] as? [String: Any])?["seats"] as? Int == 4)
        // Day 3: eve joins with her prorated share.
        let eve = try run.balance("day3-eve")
        let seat = try prorated(eve)
        #expect(member(eve) == seat)
        // eve's 480: her own first, then the pool.
        let spent = try run.balance("spent")
        #expect(pool(spent) == 1_000 - (480 - seat))
        // ben's summaries: his own 100, then the pool, until neither covers one.
        let benTotal = 100 + 1_000 - (480 - seat)
        #expect(Int(try run.text("summaries")) == benTotal / 7)
        #expect(try run.text("refusal") == "3")
        // ben's own alert fired at 9 (100 − 13 × 7); the account still holds ana's, cy's and
        // dee's credits, so its own alerts stay quiet.
        let events = run.events
        #expect(events.count == 1)
        #expect(events.first?["alert"] as? String == "ben-low" && events.first?["member"] as? String == "ben" && events.first?["balance"] as? Int == 9)
        let end = try run.balance("end")
        #expect(pool(end) == benTotal % 7)
        try? FileManager.default.removeItem(atPath: run.directory)
    }
}
