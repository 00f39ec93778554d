import NIOCore

/// The 16-byte frame header of proto/PROTOCOL.md §2. Every integer is big-endian.
public struct FrameHeader: Hashable, Sendable {
    public static let size = 16
    public static let magic: UInt16 = 0x5447  // "TG"
    public static let version: UInt8 = 1
    /// Flag bit 0: set on every frame the server sends.
    public static let responseFlag: UInt16 = 0x0001
    /// The largest body any server accepts (`maxFrameBody` is at most this): 16 MiB. A journal
    /// record holds one command's body, so it is never longer than this plus its own fields.
    public static let largestBody = 16 << 20

    public var opcode: UInt8
    public var isResponse: Bool
    /// 0 in requests; in responses 0 for success or a status code.
    public var status: UInt16
    public var requestID: UInt32
    public var bodyLength: UInt32

    public init(opcode: UInt8, isResponse: Bool, status: UInt16 = 0, requestID: UInt32, bodyLength: UInt32) {
        self.opcode = opcode
        self.isResponse = isResponse
        self.status = status
        self.requestID = requestID
        self.bodyLength = bodyLength
    }

    /// Reads a header from the start of `buffer` without moving its reader index. `nil` when
    /// fewer than 16 bytes have arrived. Throws `badFrame` as soon as the magic, the version or
    /// the flags are wrong, since framing can no longer be trusted after that.
    public static func peek(_ buffer: ByteBuffer) throws(WireError) -> FrameHeader? {
        let start = buffer.readerIndex
        if buffer.readableBytes >= 2, buffer.getInteger(at: start, as: UInt16.self) != magic {
            throw WireError(.badFrame, "bad magic: a Tollgate frame starts with 0x5447 (\"TG\")")
        }
        if buffer.readableBytes >= 3, buffer.getInteger(at: start + 2, as: UInt8.self) != version {
            throw WireError(.badFrame, "unsupported header version \(buffer.getInteger(at: start + 2, as: UInt8.self)!); this server speaks 1")
        }
        guard buffer.readableBytes >= size else { return nil }
        let opcode = buffer.getInteger(at: start + 3, as: UInt8.self)!
        let flags = buffer.getInteger(at: start + 4, as: UInt16.self)!
        guard flags & ~responseFlag == 0 else {
            throw WireError(.badFrame, "reserved flag bits are set (flags 0x\(String(flags, radix: 16)))")
        }
        return FrameHeader(
            opcode: opcode, isResponse: flags & responseFlag != 0, status: buffer.getInteger(at: start + 6, as: UInt16.self)!,
            requestID: buffer.getInteger(at: start + 8, as: UInt32.self)!, bodyLength: buffer.getInteger(at: start + 12, as: UInt32.self)!)
    }

    /// Writes the 16 bytes as two big-endian words: magic, version, opcode, flags and status,
    /// then request id and body length (one capacity check instead of seven).
    public func write(to buffer: inout ByteBuffer) {
        let flags = isResponse ? FrameHeader.responseFlag : 0
        let first = UInt64(FrameHeader.magic) << 48 | UInt64(FrameHeader.version) << 40 | UInt64(opcode) << 32 | UInt64(flags) << 16 | UInt64(status)
        buffer.writeMultipleIntegers(first, UInt64(requestID) << 32 | UInt64(bodyLength))
    }
}

/// One frame: its header and its body.
public struct Frame: Hashable, Sendable {
    public var header: FrameHeader
    public var body: ByteBuffer

    public init(header: FrameHeader, body: ByteBuffer) {
        self.header = header
        self.body = body
    }

    /// A frame with its header's body length set from `body`.
    public init(opcode: UInt8, isResponse: Bool, status: UInt16 = 0, requestID: UInt32, body: ByteBuffer) {
        self.header = FrameHeader(
            opcode: opcode, isResponse: isResponse, status: status, requestID: requestID, bodyLength: UInt32(body.readableBytes))
        self.body = body
    }

    public func write(to buffer: inout ByteBuffer) {
        var header = header
        header.bodyLength = UInt32(body.readableBytes)
        header.write(to: &buffer)
        buffer.writeImmutableBuffer(body)
    }

    public var bytes: ByteBuffer {
        var buffer = ByteBuffer()
        buffer.reserveCapacity(FrameHeader.size + body.readableBytes)
        write(to: &buffer)
        return buffer
    }
}

/// Splits a byte stream into frames. Waits for whole frames, refuses a body longer than
/// `maxBodyLength` before buffering it, and checks the direction flag: a server expects
/// requests, a client responses.
public struct FrameDecoder: ByteToMessageDecoder, Sendable {
    public typealias InboundOut = Frame

    public let maxBodyLength: Int
    public let expectsResponses: Bool

    public init(maxBodyLength: Int, expectsResponses: Bool) {
        self.maxBodyLength = maxBodyLength
        self.expectsResponses = expectsResponses
    }

    /// The next whole frame in `buffer`, consumed, or `nil` if it has not all arrived.
    public func nextFrame(_ buffer: inout ByteBuffer) throws(WireError) -> Frame? {
        guard let header = try FrameHeader.peek(buffer) else { return nil }
        guard header.isResponse == expectsResponses else {
            throw WireError(.badFrame, expectsResponses ? "expected a response frame" : "a client frame must not set the response flag")
        }
        guard header.bodyLength <= maxBodyLength else {
            throw WireError(.frameTooLarge, "body of \(header.bodyLength) bytes exceeds the limit of \(maxBodyLength)")
        }
        let total = FrameHeader.size + Int(header.bodyLength)
        guard buffer.readableBytes >= total else { return nil }
        buffer.moveReaderIndex(forwardBy: FrameHeader.size)
        let body = buffer.readSlice(length: Int(header.bodyLength))!
        return Frame(header: header, body: body)
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try nextFrame(&buffer) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        guard let frame = try decodeLast(buffer: &buffer, seenEOF: seenEOF) else { return .needMoreData }
        context.fireChannelRead(wrapInboundOut(frame))
        return .continue
    }
}

/// The same decoder, embedded in a handler (`NIOSingleStepByteToMessageProcessor`): the server
/// reads its frames this way, handed to it directly rather than sent down the pipeline, where
/// every frame (header and body, more than an existential's inline space) was boxed on the heap.
extension FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public mutating func decode(buffer: inout ByteBuffer) throws -> Frame? {
        try nextFrame(&buffer)
    }

    /// The next whole frame; at the end, bytes of a frame that never completed are an error.
    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Frame? {
        if let frame = try nextFrame(&buffer) { return frame }
        if buffer.readableBytes > 0 {
            let partial = buffer.readableBytes
            buffer.moveReaderIndex(forwardBy: partial)
            throw WireError(.malformedFrame, "connection closed in the middle of a frame (\(partial) bytes)")
        }
        return nil
    }
}

/// Writes frames.
public struct FrameEncoder: MessageToByteEncoder, Sendable {
    public typealias OutboundIn = Frame

    public init() {}

    public func encode(data: Frame, out: inout ByteBuffer) throws {
        data.write(to: &out)
    }
}
