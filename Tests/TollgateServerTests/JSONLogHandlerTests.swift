import Foundation
import Logging
import Synchronization
import Testing
@testable import TollgateServer

@Suite struct JSONLogHandlerTests {
    @Test func eachMessageIsOneJSONObjectOnOneLine() throws {
        let lines = Mutex<[String]>([])
        var handler = JSONLogHandler(label: "tollgated") { line in lines.withLock { $0.append(line) } }
        handler.logLevel = .debug
        handler[metadataKey: "node"] = "a"
        let logger = Logger(label: "tollgated") { _ in handler }
        logger.info("a \"quoted\"\nmessage\u{1}", metadata: ["seconds": "0.004", "level": "clash", "nested": ["x", "y"]])
        logger.trace("below the level")
        let written = lines.withLock { $0 }
        #expect(written.count == 1)
        let line = try #require(written.first)
        #expect(line.hasSuffix("}\n") && line.dropLast().contains("\n") == false)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(object["message"] == "a \"quoted\"\nmessage\u{1}")
        #expect(object["level"] == "info" && object["meta.level"] == "clash")
        #expect(object["label"] == "tollgated" && object["node"] == "a" && object["seconds"] == "0.004" && object["nested"] == "[x, y]")
        let time = try #require(object["time"])
        #expect(time.count == "2026-12-03T12:00:00.000000Z".count && time.hasSuffix("Z"))
    }

    /// A clock before 1970 (or absurdly far off) is written, not a trap.
    @Test func timestampsOfAnyClockAreWritten() {
        #expect(JSONLogHandler.timestamp(Date(timeIntervalSince1970: -0.5)) == "1969-12-31T23:59:59.500000Z")
        #expect(JSONLogHandler.timestamp(Date(timeIntervalSince1970: 1.25)) == "1970-01-01T00:00:01.250000Z")
        #expect(!JSONLogHandler.timestamp(Date(timeIntervalSince1970: 1e300)).isEmpty)
    }

    @Test func durationsAreWrittenAsSeconds() {
        #expect(Duration.milliseconds(3_900).secondsText == "3.900")
        #expect(Duration.microseconds(3_900).secondsText == "0.003")
        #expect(Duration.seconds(0).secondsText == "0.000")
    }
}
