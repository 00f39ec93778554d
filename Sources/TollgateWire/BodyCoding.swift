import NIOCore
import TollgateLedger

/// Reads a frame body field by field. Every read is bounded by what the body holds, every
/// failure is a `malformedFrame` naming the field, and `finish()` requires the body to be
/// consumed exactly.
public struct BodyReader {
    /// The longest string any field may carry; the ledger bounds identifiers further.
    public static let stringBytesMax = 4_096

    var buffer: ByteBuffer

    public init(_ buffer: ByteBuffer) {
        self.buffer = buffer
    }

    func malformed(_ field: String, _ problem: String = "is cut short") -> WireError {
        WireError(.malformedFrame, "\(field) \(problem)")
    }

    /// Any fixed-width integer, big-endian.
    public mutating func integer<Value: FixedWidthInteger>(_ field: String, as type: Value.Type = Value.self) throws(WireError) -> Value {
        guard let value = buffer.readInteger(as: Value.self) else { throw malformed(field) }
        return value
    }

    public mutating func u8(_ field: String) throws(WireError) -> UInt8 { try integer(field) }
    public mutating func u16(_ field: String) throws(WireError) -> UInt16 { try integer(field) }
    public mutating func u32(_ field: String) throws(WireError) -> UInt32 { try integer(field) }
    public mutating func u64(_ field: String) throws(WireError) -> UInt64 { try integer(field) }
    public mutating func i32(_ field: String) throws(WireError) -> Int32 { try integer(field) }
    public mutating func i64(_ field: String) throws(WireError) -> Int64 { try integer(field) }

    public mutating func instant(_ field: String) throws(WireError) -> Instant {
        Instant(microsecondsSinceEpoch: try i64(field))
    }

    public mutating func bool(_ field: String) throws(WireError) -> Bool {
        switch try u8(field) {
        case 0: return false
        case 1: return true
        case let other: throw malformed(field, "must be 0 or 1, not \(other)")
        }
    }

    /// Presence byte of an `opt<T>`.
    public mutating func present(_ field: String) throws(WireError) -> Bool {
        switch try u8(field) {
        case 0: return false
        case 1: return true
        case let other: throw malformed(field, "has presence byte \(other); must be 0 or 1")
        }
    }

    public mutating func string(_ field: String) throws(WireError) -> String {
        let length = Int(try u16(field))
        guard length <= Self.stringBytesMax else { throw malformed(field, "is longer than \(Self.stringBytesMax) bytes") }
        guard let bytes = buffer.readSlice(length: length) else { throw malformed(field) }
        let string = bytes.withUnsafeReadableBytes { raw -> String? in
            // Identifiers and keys are ASCII: a byte scan and a direct copy, rather than the
            // generic validator (which looks up type metadata on every call).
            if !raw.contains(where: { $0 >= 0x80 }) { return String(decoding: raw, as: UTF8.self) }
            return String(validating: raw, as: UTF8.self)
        }
        guard let string else { throw malformed(field, "is not valid UTF-8") }
        return string
    }

    public mutating func optionalString(_ field: String) throws(WireError) -> String? {
        try present(field) ? try string(field) : nil
    }

    public mutating func optionalI64(_ field: String) throws(WireError) -> Int64? {
        try present(field) ? try i64(field) : nil
    }

    public mutating func optionalU64(_ field: String) throws(WireError) -> UInt64? {
        try present(field) ? try u64(field) : nil
    }

    public mutating func slice(_ field: String, length: Int) throws(WireError) -> ByteBuffer {
        guard let slice = buffer.readSlice(length: length) else { throw malformed(field) }
        return slice
    }

    public var isAtEnd: Bool { buffer.readableBytes == 0 }

    /// Requires that nothing is left over.
    public func finish() throws(WireError) {
        guard buffer.readableBytes == 0 else {
            throw WireError(.malformedFrame, "\(buffer.readableBytes) bytes left over after the last field")
        }
    }
}

extension ByteBuffer {
    /// A `string`: u16 byte count, then UTF-8. Strings longer than the format allows are cut
    /// at a character boundary rather than producing an unreadable frame; the ledger never
    /// produces one.
    public mutating func writeWireString(_ string: String) {
        var utf8 = Array(string.utf8)
        if utf8.count > BodyReader.stringBytesMax {
            utf8 = Array(utf8.prefix(BodyReader.stringBytesMax))
            while let last = utf8.last, last & 0xC0 == 0x80 { utf8.removeLast() }
            if let last = utf8.last, last & 0x80 != 0 { utf8.removeLast() }
        }
        writeInteger(UInt16(utf8.count))
        writeBytes(utf8)
    }

    public mutating func writeOptionalString(_ string: String?) {
        if let string {
            writeInteger(UInt8(1))
            writeWireString(string)
        } else {
            writeInteger(UInt8(0))
        }
    }

    public mutating func writeOptionalInteger(_ value: UInt64?) {
        if let value {
            writeInteger(UInt8(1))
            writeInteger(value)
        } else {
            writeInteger(UInt8(0))
        }
    }

    public mutating func writeOptionalInteger(_ value: Int64?) {
        if let value {
            writeInteger(UInt8(1))
            writeInteger(value)
        } else {
            writeInteger(UInt8(0))
        }
    }

    public mutating func writeBool(_ value: Bool) {
        writeInteger(UInt8(value ? 1 : 0))
    }

    public mutating func writeInstant(_ instant: Instant) {
        writeInteger(instant.microsecondsSinceEpoch)
    }

    /// A `u32` length followed by what `body` writes; the length is back-patched once known.
    public mutating func writeLengthPrefixed(_ body: (inout ByteBuffer) -> Void) {
        let lengthIndex = writerIndex
        writeInteger(UInt32(0))
        let start = writerIndex
        body(&self)
        setInteger(UInt32(writerIndex - start), at: lengthIndex)
    }
}
