import Foundation
import NIOCore
import TollgateLedger

/// A segment file's 24-byte header (proto/JOURNAL.md §1).
public struct SegmentHeader: Hashable, Sendable {
    public static let size = 24
    public static let magic: [UInt8] = Array("TGJ1".utf8)
    public static let version: UInt16 = 1

    public var firstSequence: UInt64
    /// The checksum of the last record of the segment before, or 0 for the first segment.
    public var previousChecksum: UInt32

    public var bytes: [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeBytes(SegmentHeader.magic)
        buffer.writeInteger(SegmentHeader.version)
        buffer.writeInteger(UInt16(0))
        buffer.writeInteger(firstSequence)
        buffer.writeInteger(previousChecksum)
        buffer.writeInteger(UInt32(0))
        return Array(buffer.readableBytesView)
    }

    public static func read(_ bytes: UnsafeRawBufferPointer) -> SegmentHeader? {
        guard bytes.count >= size, Array(bytes[0..<4]) == magic else { return nil }
        let version = UInt16(bigEndian: bytes.loadUnaligned(fromByteOffset: 4, as: UInt16.self))
        guard version == SegmentHeader.version else { return nil }
        return SegmentHeader(
            firstSequence: UInt64(bigEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
            previousChecksum: UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt32.self)))
    }

    /// `segment-00000000000000000001.tgj`: the first sequence, zero-padded so names sort.
    public static func fileName(firstSequence: UInt64) -> String {
        let digits = String(firstSequence)
        return "segment-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".tgj"
    }
}

/// Damage that is not a torn tail: recovery refuses to start and says where.
public struct JournalDamage: Error, Hashable, Sendable, CustomStringConvertible {
    public var file: String
    public var offset: Int
    public var reason: String

    public var description: String { "journal damaged in \(file) at byte \(offset): \(reason)" }
}

/// What a scan of the journal found.
public struct JournalScan: Sendable {
    public var records = 0
    public var lastSequence: UInt64 = 0
    public var lastChecksum: UInt32 = 0
    public var segments: [String] = []
    /// A torn tail: the last segment ended in a record that was not completely written. It is
    /// truncated away when the scan may repair.
    public var tornTail: (file: String, offset: Int, reason: String)?

    /// An empty journal's scan.
    public init() {}
}

public enum Journal {
    public static func segmentFiles(in directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix("segment-") && $0.hasSuffix(".tgj") }.sorted().map { directory + "/" + $0 }
    }

    /// Reads every record in order, checking lengths, checksums, sequence numbers and the chain.
    /// A record that fails at the very end of the last segment, with no valid record after it,
    /// is a torn write: it is reported and, when `repair` is set, truncated away. Anything else
    /// that fails throws `JournalDamage` naming the file and offset.
    public static func scan(
        directory: String, repair: Bool, after start: Checkpoint.Position? = nil, visit: (JournalRecord) throws -> Void
    ) throws -> JournalScan {
        var scan = JournalScan()
        var files = segmentFiles(in: directory)
        if let start {
            // Segments wholly inside the checkpoint are not read: start with the one holding the
            // record after it (the last whose first sequence is at most start + 1).
            let firsts = files.map { UInt64($0.split(separator: "-").last?.prefix(20) ?? "") ?? 0 }
            if let index = firsts.lastIndex(where: { $0 <= start.sequence + 1 }) {
                files = Array(files[index...])
                scan.lastSequence = firsts[index] - 1
            } else if let first = firsts.first {
                throw JournalDamage(file: files[0], offset: 0, reason: "the journal starts at \(first), after the checkpoint at \(start.sequence)")
            } else {
                scan.lastSequence = start.sequence
                scan.lastChecksum = start.checksum
            }
        }
        scan.segments = files
        let skipThrough = start?.sequence ?? 0
        for (index, file) in files.enumerated() {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw JournalDamage(file: file, offset: 0, reason: "cannot be read")
            }
            let isLast = index == files.count - 1
            try data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) throws in
                guard let header = SegmentHeader.read(bytes) else {
                    if isLast && bytes.count < SegmentHeader.size {
                        scan.tornTail = (file, 0, "segment header cut short")
                        return
                    }
                    throw JournalDamage(file: file, offset: 0, reason: "not a Tollgate journal segment")
                }
                if index == 0 && start != nil {
                    scan.lastChecksum = header.previousChecksum
                }
                guard header.firstSequence == scan.lastSequence + 1, header.previousChecksum == scan.lastChecksum else {
                    throw JournalDamage(file: file, offset: 0, reason: "segment does not follow the one before (first sequence \(header.firstSequence), expected \(scan.lastSequence + 1))")
                }
                var offset = SegmentHeader.size
                while offset < bytes.count {
                    switch JournalRecord.read(bytes, at: offset) {
                    case .success(let read):
                        guard read.record.sequence == scan.lastSequence + 1 else {
                            throw JournalDamage(file: file, offset: offset, reason: "sequence \(read.record.sequence) where \(scan.lastSequence + 1) was expected")
                        }
                        guard read.previousChecksum == scan.lastChecksum else {
                            throw JournalDamage(file: file, offset: offset, reason: "record \(read.record.sequence) does not chain to the one before")
                        }
                        if let start, read.record.sequence == start.sequence, read.checksum != start.checksum {
                            throw JournalDamage(file: file, offset: offset, reason: "record \(start.sequence) does not match the checkpoint")
                        }
                        if read.record.sequence > skipThrough {
                            try visit(read.record)
                            scan.records += 1
                        }
                        scan.lastSequence = read.record.sequence
                        scan.lastChecksum = read.checksum
                        offset += read.size
                    case .failure(let problem):
                        guard isLast, !containsValidRecord(bytes, after: offset) else {
                            throw JournalDamage(file: file, offset: offset, reason: "\(problem)")
                        }
                        scan.tornTail = (file, offset, "\(problem)")
                        return
                    }
                }
            }
        }
        if let start, scan.lastSequence < start.sequence {
            throw JournalDamage(file: files.last ?? directory, offset: 0, reason: "the journal ends at \(scan.lastSequence), before the checkpoint at \(start.sequence)")
        }
        if let start, scan.lastSequence == start.sequence, scan.lastChecksum != start.checksum {
            throw JournalDamage(file: files.last ?? directory, offset: 0, reason: "the journal does not match the checkpoint at \(start.sequence)")
        }
        if repair, let torn = scan.tornTail {
            guard truncate(torn.file, to: torn.offset < SegmentHeader.size ? 0 : torn.offset) else {
                throw JournalDamage(file: torn.file, offset: torn.offset, reason: "the torn tail could not be truncated")
            }
            if torn.offset < SegmentHeader.size { try? FileManager.default.removeItem(atPath: torn.file) }
        }
        return scan
    }

    /// Whether any byte position after `offset` starts a record with a valid checksum: if one
    /// does, the failure at `offset` is damage in the middle, not a torn end.
    static func containsValidRecord(_ bytes: UnsafeRawBufferPointer, after offset: Int) -> Bool {
        var position = offset + 1
        while position + JournalRecord.headerSize <= bytes.count {
            if case .success = JournalRecord.read(bytes, at: position) { return true }
            position += 1
        }
        return false
    }

    static func truncate(_ file: String, to length: Int) -> Bool {
        let descriptor = open(file, O_WRONLY)
        guard descriptor >= 0 else { return false }
        defer { close(descriptor) }
        return ftruncate(descriptor, off_t(length)) == 0 && fsync(descriptor) == 0
    }
}
