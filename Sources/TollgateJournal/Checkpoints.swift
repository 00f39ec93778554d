import Foundation
import NIOCore
import TollgateLedger

#if canImport(Glibc)
import Glibc
#endif

/// Full-state checkpoints beside the journal (proto/JOURNAL.md §6): a ledger snapshot and the
/// journal position it includes, written atomically, so recovery replays only what follows.
public enum Checkpoint {
    static let magic: [UInt8] = Array("TGC1".utf8)
    static let headerSize = 32

    public struct Position: Hashable, Sendable {
        /// The last journal record the checkpoint includes, and that record's checksum.
        public var sequence: UInt64
        public var checksum: UInt32

        public init(sequence: UInt64, checksum: UInt32) {
            self.sequence = sequence
            self.checksum = checksum
        }
    }

    public static func fileName(_ sequence: UInt64) -> String {
        let digits = String(sequence)
        return "checkpoint-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".tgc"
    }

    public static func files(in directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("checkpoint-") && $0.hasSuffix(".tgc") }.sorted().map { directory + "/" + $0 }
    }

    /// Writes a checkpoint atomically: a temporary file, fsync, rename, directory fsync.
    /// Returns the file's path.
    @discardableResult
    public static func write(_ snapshot: [UInt8], at position: Position, in directory: String) throws -> String {
        var header = ByteBuffer()
        header.writeBytes(magic)
        header.writeInteger(UInt16(2))
        header.writeInteger(UInt16(0))
        header.writeInteger(position.sequence)
        header.writeInteger(position.checksum)
        header.writeInteger(UInt64(snapshot.count))
        // Version 2: the checksum covers the header's fields as well as the snapshot, so a
        // damaged position is seen as damage, not taken for a place in the journal.
        let fields = header.withUnsafeReadableBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[4..<28])) }
        header.writeInteger(CRC32C.checksum(snapshot, seed: fields))
        let path = directory + "/" + fileName(position.sequence)
        let temporary = path + ".tmp"
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard descriptor >= 0 else { throw JournalError("cannot create \(temporary): \(String(cString: strerror(errno)))") }
        let files = SystemJournalFiles()
        let ok = header.withUnsafeReadableBytes { files.write(descriptor, $0) } == header.readableBytes
            && snapshot.withUnsafeBytes { files.write(descriptor, $0) } == snapshot.count
            && fsync(descriptor) == 0
        close(descriptor)
        guard ok, rename(temporary, path) == 0 else {
            unlink(temporary)
            throw JournalError("cannot write the checkpoint \(path): \(String(cString: strerror(errno)))")
        }
        try syncDirectory(directory)
        return path
    }

    /// Reads a checkpoint file; `nil` if it is not a whole, valid checkpoint.
    public static func read(_ path: String, limits: LedgerLimits) -> (Ledger, Position)? {
        guard let data = FileManager.default.contents(atPath: path), data.count >= headerSize else { return nil }
        let bytes = [UInt8](data)
        guard Array(bytes[0..<4]) == magic else { return nil }
        var header = ByteBuffer(bytes: bytes[4..<headerSize])
        guard let version = header.readInteger(as: UInt16.self), version == 1 || version == 2, header.readInteger(as: UInt16.self) != nil,
            let sequence = header.readInteger(as: UInt64.self), let checksum = header.readInteger(as: UInt32.self),
            let length = header.readInteger(as: UInt64.self), let crc = header.readInteger(as: UInt32.self),
            length == UInt64(bytes.count - headerSize)
        else { return nil }
        // The file is named by the sequence it includes: a header saying otherwise is damaged
        // (the only check a version 1 header, whose checksum covers the snapshot alone, gets).
        guard (path as NSString).lastPathComponent == fileName(sequence) else { return nil }
        let snapshot = Array(bytes[headerSize...])
        let seed = version == 2 ? CRC32C.checksum(Array(bytes[4..<28])) : 0
        guard CRC32C.checksum(snapshot, seed: seed) == crc, let ledger = try? Ledger(snapshot: snapshot, limits: limits) else { return nil }
        return (ledger, Position(sequence: sequence, checksum: checksum))
    }

    /// The newest checkpoint that reads back whole, if any; damaged ones are passed over.
    public static func newest(in directory: String, limits: LedgerLimits) -> (ledger: Ledger, position: Position, file: String)? {
        for file in files(in: directory).reversed() {
            if let (ledger, position) = read(file, limits: limits) { return (ledger, position, file) }
        }
        return nil
    }

    /// Deletes checkpoints older than the newest `keep`, and segments whose every record is
    /// in the newest checkpoint and whose file is older than `retentionSeconds`.
    /// Also deletes what a checkpoint interrupted by a crash left behind (`.tgc.tmp` files);
    /// prune runs after a checkpoint is written, so none is being written then.
    public static func prune(directory: String, keep: Int = 2, retentionSeconds: Double) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix("checkpoint-") && name.hasSuffix(".tgc.tmp") {
            unlink(directory + "/" + name)
        }
        let checkpoints = files(in: directory)
        for file in checkpoints.dropLast(keep) { unlink(file) }
        guard let newest = checkpoints.last, let sequence = UInt64(newest.split(separator: "-").last?.prefix(20) ?? "") else { return }
        let segments = Journal.segmentFiles(in: directory)
        let cutoff = Date().addingTimeInterval(-retentionSeconds)
        for (index, segment) in segments.enumerated() where index + 1 < segments.count {
            // The next segment's first sequence says where this one ended.
            guard let next = UInt64(segments[index + 1].split(separator: "-").last?.prefix(20) ?? ""), next <= sequence + 1 else { break }
            let modified = (try? FileManager.default.attributesOfItem(atPath: segment)[.modificationDate] as? Date) ?? Date()
            if modified < cutoff { unlink(segment) }
        }
    }
}
