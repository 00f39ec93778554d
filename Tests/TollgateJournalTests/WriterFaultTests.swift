import Foundation
import Synchronization
import Testing
import TollgateJournal
import TollgateLedger
import TollgateLedgerTestSupport

#if canImport(Glibc)
import Glibc
#endif

/// The writer through failed writes, failed fsyncs and a segment it cannot create: answers
/// wait rather than fail, nothing is written twice or after a gap, and it resumes by itself.
@Suite struct WriterFaultTests {
    /// Polls on the calling thread (these tests run on a thread of their own).
    func eventually(_ what: String, within seconds: Double = 30, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            guard Date() < deadline else { throw Unexpected("\(what) did not happen within \(seconds) s") }
            Thread.sleep(forTimeInterval: 0.01)
        }
    }

    @Test(arguments: ["write", "sync", "create"])
    func aFailingDiskDelaysButNeverLosesOrDuplicates(fault: String) async throws {
        let directory = temporaryDirectory()
        let entries = sampleRecords(400)
        let files = SimulatedDisk()
        try await OffPool.blocking("writer-faults") {
            let writer = try JournalWriter(directory: directory, mode: .sync, after: try Journal.scan(directory: directory, repair: true) { _ in }, segmentBytes: 4_096, files: files)
            var next = 0
            func append(_ count: Int) -> UInt64 {
                var last: UInt64 = 0
                for entry in entries[next..<next + count] { last = writer.append(entry.command, key: entry.key, instant: entry.at) }
                next += count
                return last
            }
            guard writer.waitUntilDurable(append(20), timeoutMilliseconds: 30_000) else { throw Unexpected("the first batch was not kept") }

            switch fault {
            case "write": files.faults.write = true
            case "sync": files.faults.sync = true
            default: files.faults.create = true
            }
            let failuresBefore = writer.failureCount
            // Enough records to fill the segment, so a rotation (and a creation) is due.
            let waiting = append(60)
            let answered = Mutex<Result<Void, JournalError>?>(nil)
            writer.whenDurable(waiting) { result in answered.withLock { $0 = result } }
            try eventually("a failure") { writer.failureReason != nil && writer.failureCount > failuresBefore }
            if fault != "create" {
                // What was appended is not on disk, and its waiter has not been answered.
                #expect(writer.durableSequence < waiting)
                #expect(answered.withLock { $0 } == nil)
            }
            files.faults = SimulatedDisk.Faults()
            try eventually("the writer resuming") { writer.failureReason == nil }
            let last = append(40)
            guard writer.waitUntilDurable(last, timeoutMilliseconds: 30_000) else { throw Unexpected("records after the failure were not kept") }
            try eventually("the waiter's answer") { answered.withLock { $0 } != nil }
            if case .failure(let error) = answered.withLock({ $0 })! { throw Unexpected("the waiter was told \(error)") }
            writer.close()
        }
        let (records, scan) = try readAll(directory)
        #expect(scan.tornTail == nil)
        #expect(records.map(\.sequence) == Array(1...120))
        #expect(records.map(\.command) == entries.prefix(120).map(\.command))
        #expect(scan.segments.count > 1)
    }

    /// Records the writer never wrote are reported as certainly not kept when it stops.
    @Test func closingWithRecordsUnwrittenSaysTheyWereNotKept() async throws {
        let directory = temporaryDirectory()
        let entries = sampleRecords(10)
        let files = SimulatedDisk()
        let outcome = try await OffPool.blocking("writer-close") { () throws -> JournalError? in
            let writer = try JournalWriter(directory: directory, mode: .sync, after: try Journal.scan(directory: directory, repair: true) { _ in }, files: files)
            files.faults.write = true
            var last: UInt64 = 0
            for entry in entries { last = writer.append(entry.command, key: entry.key, instant: entry.at) }
            let answered = Mutex<Result<Void, JournalError>?>(nil)
            writer.whenDurable(last) { result in answered.withLock { $0 = result } }
            try eventually("a failure") { writer.failureReason != nil }
            writer.close()
            try eventually("the waiter's answer") { answered.withLock { $0 } != nil }
            if case .failure(let error) = answered.withLock({ $0 })! { return error }
            return nil
        }
        let error = try outcome.required("the waiter was told its record was kept")
        #expect(error.notKept)
        // And indeed: the half-written batch was cut back, so nothing of it comes back.
        let (records, scan) = try readAll(directory)
        #expect(records.isEmpty && scan.tornTail == nil)
    }
}
