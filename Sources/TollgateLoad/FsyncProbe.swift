import ArgumentParser
import Foundation
import NIOCore
import TollgateLedger

#if canImport(Glibc)
import Glibc
#endif

/// `tollgate-load fsync-probe`: what one append-and-fdatasync costs on this disk now, the
/// baseline the `sync` journal is held to in the same run (bench/run). Appends `--bytes` to a
/// file in `--dir` and fdatasyncs it, back to back, for `--duration` seconds; the latency
/// of each append + fdatasync is reported as both corrected and uncorrected.
struct FsyncProbe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsync-probe", abstract: "Measure append + fdatasync latency in a directory (the baseline of the sync journal).")
    @Option(help: "Directory for the probe's file (removed afterwards); the journal's disk.") var dir = "."
    @Option(help: "Seconds to measure.") var duration: Double = 5
    @Option(help: "Bytes appended before each fdatasync (a group commit's batch).") var bytes = 4_096
    @Option var label = "fdatasync"
    @Flag var json = false

    func validate() throws {
        guard duration > 0, duration <= 3_600 else { throw ValidationError("--duration is 0 to 3,600 seconds") }
        guard (1...(64 << 20)).contains(bytes) else { throw ValidationError("--bytes is 1 to 67,108,864") }
    }

    func run() throws {
        let path = dir + "/tollgate-fsync-probe.\(getpid())"
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o600)
        guard descriptor >= 0 else { throw ValidationError("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer {
            close(descriptor)
            unlink(path)
        }
        let block = [UInt8](repeating: 0x5A, count: bytes)
        var measured = Measured()
        let end = NIODeadline.now() + .nanoseconds(Int64(duration * 1_000_000_000))
        var written = 0
        while NIODeadline.now() < end {
            let start = NIODeadline.now()
            let result = block.withUnsafeBytes { write(descriptor, $0.baseAddress!, $0.count) }
            guard result == bytes, fdatasync(descriptor) == 0 else { throw ValidationError("write or fdatasync failed: \(String(cString: strerror(errno)))") }
            let nanoseconds = UInt64(max(0, (NIODeadline.now() - start).nanoseconds))
            measured.corrected.record(nanoseconds)
            measured.uncorrected.record(nanoseconds)
            measured.sent += 1
            measured.answered += 1
            measured.decisions += 1
            written += bytes
            if written >= 256 << 20 {  // keep the file small: start again at zero
                _ = ftruncate(descriptor, 0)
                written = 0
            }
        }
        let report = Report(
            label: label, mode: "fdatasync", offered: nil, seconds: duration, connections: 0, batch: 1, operation: "fdatasync of \(bytes) bytes",
            accounts: "-", accountCount: 0, measured: measured, cpus: Run.allowedCPUs())
        print(json ? report.json : report.text)
    }
}
