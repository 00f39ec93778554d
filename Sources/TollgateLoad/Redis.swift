import NIOCore
import NIOPosix

/// The baselines: what a team would build instead of Tollgate, on Redis. `redis-lua` does the
/// same decision atomically in Lua scripts (a pooled balance and a per-member cap; reserve puts
/// a hold with a TTL, commit removes it); `redis-naive` checks the balance with GET and then
/// takes with DECRBY — two round trips and a race, for reference.
enum RedisScripts {
    /// KEYS: pool, member's consumption, hold. ARGV: cost, member cap, hold TTL in ms.
    static let reserve = """
        local pool = tonumber(redis.call('GET', KEYS[1]) or '0')
        local used = tonumber(redis.call('GET', KEYS[2]) or '0')
        local cost = tonumber(ARGV[1])
        if pool < cost then return -1 end
        if used + cost > tonumber(ARGV[2]) then return -2 end
        redis.call('DECRBY', KEYS[1], cost)
        redis.call('INCRBY', KEYS[2], cost)
        redis.call('SET', KEYS[3], cost, 'PX', ARGV[3])
        return 1
        """
    /// KEYS: hold. The reserved credits stay taken; the hold is gone.
    static let commit = """
        local held = redis.call('GET', KEYS[1])
        if not held then return -10 end
        redis.call('DEL', KEYS[1])
        return tonumber(held)
        """
    /// KEYS: pool, member's consumption. ARGV: cost, member cap.
    static let spend = """
        local pool = tonumber(redis.call('GET', KEYS[1]) or '0')
        local used = tonumber(redis.call('GET', KEYS[2]) or '0')
        local cost = tonumber(ARGV[1])
        if pool < cost then return -1 end
        if used + cost > tonumber(ARGV[2]) then return -2 end
        redis.call('DECRBY', KEYS[1], cost)
        redis.call('INCRBY', KEYS[2], cost)
        return 1
        """
}

/// A RESP reply, as far as the baselines need one.
enum RESPValue: Sendable {
    case simple(String)
    case error(String)
    case integer(Int64)
    case bulk(String?)
    case array([RESPValue]?)
}

/// Decodes RESP replies; waits for a whole reply before emitting it.
struct RESPDecoder: ByteToMessageDecoder {
    typealias InboundOut = RESPValue

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        var copy = buffer
        guard let value = try RESPDecoder.parse(&copy) else { return .needMoreData }
        buffer = copy
        context.fireChannelRead(wrapInboundOut(value))
        return .continue
    }

    struct Malformed: Error {}

    static func line(_ buffer: inout ByteBuffer) -> String? {
        let view = buffer.readableBytesView
        guard let cr = view.firstIndex(of: UInt8(ascii: "\r")), cr + 1 < view.endIndex else { return nil }
        let length = cr - view.startIndex
        let text = buffer.readString(length: length)
        buffer.moveReaderIndex(forwardBy: 2)
        return text
    }

    static func parse(_ buffer: inout ByteBuffer) throws -> RESPValue? {
        guard let kind = buffer.readInteger(as: UInt8.self) else { return nil }
        guard let text = line(&buffer) else { return nil }
        switch kind {
        case UInt8(ascii: "+"): return .simple(text)
        case UInt8(ascii: "-"): return .error(text)
        case UInt8(ascii: ":"):
            guard let value = Int64(text) else { throw Malformed() }
            return .integer(value)
        case UInt8(ascii: "$"):
            guard let length = Int(text) else { throw Malformed() }
            if length < 0 { return .bulk(nil) }
            guard buffer.readableBytes >= length + 2, let string = buffer.readString(length: length) else { return nil }
            buffer.moveReaderIndex(forwardBy: 2)
            return .bulk(string)
        case UInt8(ascii: "*"):
            guard let count = Int(text) else { throw Malformed() }
            if count < 0 { return .array(nil) }
            var items: [RESPValue] = []
            for _ in 0..<count {
                guard let item = try parse(&buffer) else { return nil }
                items.append(item)
            }
            return .array(items)
        default:
            throw Malformed()
        }
    }
}

extension ByteBuffer {
    /// A RESP command: an array of bulk strings.
    mutating func writeRESP(_ arguments: [String]) {
        writeString("*\(arguments.count)\r\n")
        for argument in arguments {
            writeString("$\(argument.utf8.count)\r\n")
            writeString(argument)
            writeString("\r\n")
        }
    }
}

/// A blocking-free way to send setup commands and wait for each reply, for `setup --redis`.
final class RESPCollector: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = RESPValue
    var waiting: [EventLoopPromise<RESPValue>] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if !waiting.isEmpty { waiting.removeFirst().succeed(unwrapInboundIn(data)) }
    }

    func command(_ arguments: [String], on channel: any Channel) -> EventLoopFuture<RESPValue> {
        let promise = channel.eventLoop.makePromise(of: RESPValue.self)
        channel.eventLoop.execute {
            self.waiting.append(promise)
            var buffer = channel.allocator.buffer(capacity: 64)
            buffer.writeRESP(arguments)
            channel.writeAndFlush(buffer, promise: nil)
        }
        return promise.futureResult
    }
}
