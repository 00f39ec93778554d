import NIOCore
import TollgateLedger
import TollgateWire

/// One journal record (proto/JOURNAL.md §2): a command applied to the ledger, the key it came
/// with and the instant it was decided at.
public struct JournalRecord: Hashable, Sendable {
    public static let headerSize = 30
    public static let kindCommand: UInt8 = 1
    /// The largest record length (the bytes after the length and checksum): the record's own
    /// fields and the largest body a server accepts, so every command a server took fits, and
    /// writing and reading agree on one limit.
    public static let bodyLimit = headerSize - 8 + FrameHeader.largestBody

    public var sequence: UInt64
    public var instant: Instant
    public var key: String
    public var command: Command

    public init(sequence: UInt64, instant: Instant, key: String, command: Command) {
        self.sequence = sequence
        self.instant = instant
        self.key = key
        self.command = command
    }

    /// Appends the record, chained to the checksum of the record before it; returns its own
    /// checksum, which the next record chains to.
    /// `body`: the command's request body as it arrived (key and fields, PROTOCOL.md), which
    /// the decoder read as this command and key; written as it is instead of encoding the
    /// command again. Nil: the command is encoded here.
    @discardableResult
    public func write(to buffer: inout ByteBuffer, previousChecksum: UInt32, body: ByteBuffer? = nil) -> UInt32 {
        let start = buffer.writerIndex
        // Length and checksum (patched below), sequence, the checksum chained to, instant,
        // kind and opcode: one write of the fixed fields.
        buffer.writeMultipleIntegers(
            UInt32(0), UInt32(0), sequence, previousChecksum, instant.microsecondsSinceEpoch, JournalRecord.kindCommand, command.opcode.rawValue)
        let checked = start + 8
        if let body {
            buffer.writeImmutableBuffer(body)
        } else {
            WireRequest.command(command, key: key).encodeBody(into: &buffer)
        }
        let length = buffer.writerIndex - checked
        let checksum = buffer.withUnsafeReadableBytes { bytes in
            CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[(checked - buffer.readerIndex)...]))
        }
        buffer.setInteger(UInt32(length), at: start)
        buffer.setInteger(checksum, at: start + 4)
        return checksum
    }
}

/// Why a stretch of journal bytes is not a valid record.
public enum RecordProblem: Error, Hashable, Sendable, CustomStringConvertible {
    /// Fewer bytes than the record says it has: the end of a write that did not finish.
    case truncated
    case badLength(UInt32)
    case badChecksum
    case badBody(String)

    public var description: String {
        switch self {
        case .truncated: "the record is cut short"
        case .badLength(let length): "implausible record length \(length)"
        case .badChecksum: "checksum mismatch"
        case .badBody(let reason): "undecodable command: \(reason)"
        }
    }
}

/// A record read back, with where it was and the checksums that chain it.
public struct ReadRecord: Sendable {
    public var record: JournalRecord
    public var offset: Int
    public var size: Int
    public var checksum: UInt32
    public var previousChecksum: UInt32
}

extension JournalRecord {
    /// Reads the record at `offset` in `bytes`.
    public static func read(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Result<ReadRecord, RecordProblem> {
        guard offset + 8 <= bytes.count else { return .failure(.truncated) }
        let length = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self))
        let stored = UInt32(bigEndian: bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self))
        guard length >= UInt32(headerSize - 8), length <= UInt32(bodyLimit) else { return .failure(.badLength(length)) }
        let end = offset + 8 + Int(length)
        guard end <= bytes.count else { return .failure(.truncated) }
        let checked = UnsafeRawBufferPointer(rebasing: bytes[(offset + 8)..<end])
        guard CRC32C.checksum(checked) == stored else { return .failure(.badChecksum) }
        var buffer = ByteBuffer(bytes: checked)
        let sequence = buffer.readInteger(as: UInt64.self)!
        let previous = buffer.readInteger(as: UInt32.self)!
        let instant = Instant(microsecondsSinceEpoch: buffer.readInteger(as: Int64.self)!)
        let kind = buffer.readInteger(as: UInt8.self)!
        let opcode = buffer.readInteger(as: UInt8.self)!
        guard kind == kindCommand else { return .failure(.badBody("unknown record kind \(kind)")) }
        let request: WireRequest
        do {
            request = try WireRequest.decode(opcode: opcode, body: buffer)
        } catch {
            return .failure(.badBody(error.message))
        }
        guard case .command(let command, let key) = request else { return .failure(.badBody("opcode \(opcode) is not a command")) }
        return .success(
            ReadRecord(
                record: JournalRecord(sequence: sequence, instant: instant, key: key, command: command), offset: offset,
                size: end - offset, checksum: stored, previousChecksum: previous))
    }
}
