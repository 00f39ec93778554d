import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import TollgateJournal
import TollgateLedger

/// `tollgate backup DATA_DIR DEST`: a consistent copy of a data directory, taken while
/// tollgated runs. Restoring is starting tollgated on a copy of DEST (README, "Durability").
///
/// What makes the copy consistent: the journal is append-only and checkpoints and runs of
/// idempotency keys are written whole and renamed into place, so the copy takes the checkpoints
/// and the key runs, then the journal segments in order; if a checkpoint or a run appeared or
/// went away meanwhile (a checkpoint written, runs merged), it starts again. The journal's
/// last record may be cut short by a write in progress: the copy's torn tail is truncated, as
/// tollgated does at start, so the backup holds every record completely written when it was
/// read. The admin token and other secrets are not copied.
struct BackupCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup", abstract: "Copy a data directory consistently, while tollgated runs.",
        discussion: """
            Copies the checkpoints, the idempotency keys on disk, the journal and the event log of \
            DATA_DIR into DEST (new or empty), then checks the copied journal. To restore, stop \
            tollgated (or use a new machine), put a copy of DEST where its --data-dir points, and \
            start it: it loads the newest checkpoint and replays the journal after it, as after any \
            restart. Exit status: 0 copied and checked, 1 not (DEST is then incomplete).
            """)

    @Argument(help: "The data directory tollgated uses (its --data-dir).") var dataDirectory: String
    @Argument(help: "Where to put the copy: a new or empty directory.") var destination: String
    @Flag(help: "Print JSON instead of text.") var json = false

    func run() throws {
        let files = FileManager.default
        guard files.fileExists(atPath: dataDirectory + "/journal") else {
            throw ValidationError("\(dataDirectory) is not a tollgated data directory (no journal/ in it)")
        }
        if files.fileExists(atPath: destination), !((try? files.contentsOfDirectory(atPath: destination))?.isEmpty ?? false) {
            throw ValidationError("\(destination) exists and is not empty")
        }
        var copied: Totals?
        var attempts = 0
        while copied == nil, attempts < 10 {
            attempts += 1
            try? files.removeItem(atPath: destination)
            copied = try copyOnce()
        }
        guard let copied else {
            fail("the data directory kept changing under the copy (10 attempts: checkpoints or key runs written meanwhile)")
        }
        // As recovery reads it: the newest checkpoint, then the journal after it (segments
        // before it may have been pruned, so the journal need not start at record 1).
        let newest = Checkpoint.newest(in: destination + "/journal", limits: LedgerLimits())
        if copied.checkpoints > 0 && newest == nil { fail("no copied checkpoint reads back") }
        let scan: JournalScan
        do {
            scan = try Journal.scan(directory: destination + "/journal", repair: true, after: newest?.position) { _ in }
        } catch {
            fail("the copied journal does not read back: \(error)")
        }
        let summary: [String: Any] = [
            "destination": destination, "checkpoints": copied.checkpoints, "keyRuns": copied.keyRuns, "segments": scan.segments.count,
            "recordsAfterCheckpoint": scan.records, "lastSequence": scan.lastSequence, "bytes": copied.bytes, "attempts": attempts,
            "tornTailTruncated": scan.tornTail != nil, "checkpointSequence": newest.map { Int($0.position.sequence) } as Any,
        ]
        if json {
            print(Output.json(summary))
        } else {
            print(
                "backed up \(dataDirectory) to \(destination): \(copied.checkpoints) checkpoints (newest at record \(newest.map { String($0.position.sequence) } ?? "-")), "
                    + "\(copied.keyRuns) key runs, \(scan.segments.count) journal segments, \(scan.records) records after the checkpoint (last \(scan.lastSequence))"
                    + (scan.tornTail != nil ? ", a record being written at the end left out" : "") + "; \(copied.bytes) bytes")
        }
    }

    struct Totals {
        var checkpoints = 0
        var keyRuns = 0
        var bytes: Int64 = 0
    }

    /// One pass; nil if the checkpoints or key runs changed while it copied.
    func copyOnce() throws -> Totals? {
        let files = FileManager.default
        let journal = dataDirectory + "/journal"
        let keys = dataDirectory + "/keys"
        func listing() -> [String] {
            let checkpoints = Checkpoint.files(in: journal)
            let runs = ((try? files.contentsOfDirectory(atPath: keys)) ?? []).filter { $0.hasSuffix(".tgk") }.sorted().map { keys + "/" + $0 }
            return checkpoints + runs
        }
        let before = listing()
        var totals = Totals()
        for directory in ["journal", "keys", "events"] {
            try files.createDirectory(atPath: destination + "/" + directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        for file in before {
            let name = (file as NSString).lastPathComponent
            let target = destination + (file.hasPrefix(keys + "/") ? "/keys/" : "/journal/") + name
            guard let bytes = copy(file, to: target) else { return nil }
            totals.bytes += bytes
            if name.hasSuffix(".tgc") { totals.checkpoints += 1 } else { totals.keyRuns += 1 }
        }
        for segment in Journal.segmentFiles(in: journal) {
            guard let bytes = copy(segment, to: destination + "/journal/" + (segment as NSString).lastPathComponent) else { return nil }
            totals.bytes += bytes
        }
        guard listing() == before else { return nil }
        // The event log, to its last whole line (a line being appended is left out).
        for name in ["events.log", "webhook.cursor"] {
            let source = dataDirectory + "/events/" + name
            guard var data = files.contents(atPath: source) else { continue }
            if name == "events.log", let end = data.lastIndex(of: UInt8(ascii: "\n")) { data = data.prefix(through: end) }
            guard files.createFile(atPath: destination + "/events/" + name, contents: data, attributes: [.posixPermissions: 0o600]) else {
                fail("cannot write \(destination)/events/\(name)")
            }
            totals.bytes += Int64(data.count)
        }
        return totals
    }

    /// Copies a file as it is now, a MiB at a time, and syncs the copy; nil if the file went
    /// away meanwhile (pruned, merged).
    func copy(_ source: String, to target: String) -> Int64? {
        let input = open(source, O_RDONLY)
        guard input >= 0 else { return nil }
        defer { close(input) }
        let output = open(target, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard output >= 0 else { fail("cannot create \(target): \(String(cString: strerror(errno)))") }
        defer { close(output) }
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        var total: Int64 = 0
        while true {
            let count = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                fail("cannot read \(source): \(String(cString: strerror(errno)))")
            }
            if count == 0 { break }
            var written = 0
            while written < count {
                let step = buffer.withUnsafeBytes { write(output, $0.baseAddress! + written, count - written) }
                if step < 0 {
                    if errno == EINTR { continue }
                    fail("cannot write \(target): \(String(cString: strerror(errno)))")
                }
                written += step
            }
            total += Int64(count)
        }
        guard fsync(output) == 0 else { fail("cannot sync \(target): \(String(cString: strerror(errno)))") }
        return total
    }

    func fail(_ message: String) -> Never {
        if json {
            print(Output.json(["error": message, "destination": destination]))
        } else {
            FileHandle.standardError.write(Data("tollgate: backup: \(message)\n".utf8))
        }
        Foundation.exit(ExitStatus.failed)
    }
}
