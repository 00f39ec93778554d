import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing
import TollgateLedger
import TollgateLedgerTestSupport
import TollgateWire

@Suite struct FrameDecoderTests {
    func frames() -> [Frame] {
        Samples.all.filter { $0.direction == .request }.map(\.frame)
    }

    @Test func decodesByteAtATimeAndCoalesced() async throws {
        let pairs = frames().map { frame -> (ByteBuffer, [Frame]) in
            (frame.bytes, [frame])
        }
        // Every split of every frame: a CPU loop, on a thread of its own.
        try await OffPool.cpu("decoder-verifier") {
            try ByteToMessageDecoderVerifier.verifyDecoder(
                inputOutputPairs: pairs,
                decoderFactory: { FrameDecoder(maxBodyLength: 65_536, expectsResponses: false) })
        }
    }

    @Test func waitsForTheWholeFrame() throws {
        let decoder = FrameDecoder(maxBodyLength: 65_536, expectsResponses: false)
        let bytes = WireRequest.ping.frame(requestID: 3).bytes
        for cut in 0..<bytes.readableBytes {
            var partial = bytes.getSlice(at: 0, length: cut)!
            #expect(try decoder.nextFrame(&partial) == nil, "decoded from \(cut) bytes")
            #expect(partial.readableBytes == cut, "consumed bytes of a partial frame")
        }
    }

    @Test func rejectsBadHeadersAsSoonAsTheyShow() {
        let decoder = FrameDecoder(maxBodyLength: 16, expectsResponses: false)
        func error(_ bytes: [UInt8]) -> WireError? {
            var buffer = ByteBuffer(bytes: bytes)
            do {
                _ = try decoder.nextFrame(&buffer)
                return nil
            } catch {
                return error
            }
        }
        #expect(error([0x47, 0x45]) == WireError(.badFrame, "bad magic: a Tollgate frame starts with 0x5447 (\"TG\")"))
        #expect(error([0x54, 0x47, 0x02])?.status == .badFrame)
        // Reserved flag bits.
        #expect(error([0x54, 0x47, 0x01, 0x02, 0x80, 0x00, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])?.status == .badFrame)
        // The response flag on a request.
        #expect(error([0x54, 0x47, 0x01, 0x02, 0x00, 0x01, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])?.status == .badFrame)
        // Longer than the limit, refused from the header alone.
        #expect(error([0x54, 0x47, 0x01, 0x02, 0x00, 0x00, 0, 0, 0, 0, 0, 1, 0, 0, 0, 17])?.status == .frameTooLarge)
        #expect(error([0x54, 0x47, 0x01, 0x02, 0x00, 0x00, 0, 0, 0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF])?.status == .frameTooLarge)
    }

    @Test func aTruncatedFrameAtEndOfStreamIsAnError() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder(maxBodyLength: 65_536, expectsResponses: false)))
        var bytes = WireRequest.ping.frame(requestID: 3).bytes
        bytes.moveWriterIndex(to: 10)
        try channel.writeInbound(bytes)
        #expect(throws: WireError.self) { try channel.finish() }
    }

    @Test func bodiesMustBeConsumedExactly() throws {
        var body = ByteBuffer()
        WireRequest.ping.encodeBody(into: &body)
        body.writeInteger(UInt8(0))
        #expect(throws: WireError(.malformedFrame, "1 bytes left over after the last field")) {
            _ = try WireRequest.decode(opcode: Opcode.ping.rawValue, body: body)
        }
        var reserve = ByteBuffer()
        WireRequest.command(.reserve(Reserve(Samples.acmeRequest, ttlMicroseconds: 1)), key: "k").encodeBody(into: &reserve)
        reserve.moveWriterIndex(to: reserve.writerIndex - 1)
        #expect(throws: WireError(.malformedFrame, "ttlMicroseconds is cut short")) {
            _ = try WireRequest.decode(opcode: Opcode.reserve.rawValue, body: reserve)
        }
    }

    /// PROTOCOL.md's own limits: a client name of at most 64 bytes, and a `held` commit's value 0.
    @Test func theSpecsSmallRulesAreEnforced() throws {
        var hello = ByteBuffer()
        WireRequest.hello(Hello(clientName: String(repeating: "n", count: 300))).encodeBody(into: &hello)
        #expect(throws: WireError(.malformedFrame, "clientName is 300 bytes; at most 64")) {
            _ = try WireRequest.decode(opcode: Opcode.hello.rawValue, body: hello)
        }
        var fine = ByteBuffer()
        WireRequest.hello(Hello(clientName: String(repeating: "n", count: 64))).encodeBody(into: &fine)
        _ = try WireRequest.decode(opcode: Opcode.hello.rawValue, body: fine)

        var commit = ByteBuffer()
        WireRequest.command(.commit(Commit(HoldReference(account: "acme", hold: 1), amount: .held)), key: "k").encodeBody(into: &commit)
        // The value is the eight bytes before the final flag.
        commit.setInteger(Int64(5), at: commit.writerIndex - 9)
        #expect(throws: WireError(.malformedFrame, "amount value is 5; must be 0 with kind 0 (held)")) {
            _ = try WireRequest.decode(opcode: Opcode.commit.rawValue, body: commit)
        }
    }

    @Test func fieldsAreValidated() throws {
        func decodeCheck(_ build: (inout ByteBuffer) -> Void) -> WireError? {
            var body = ByteBuffer()
            build(&body)
            do {
                _ = try WireRequest.decode(opcode: Opcode.check.rawValue, body: body)
                return nil
            } catch {
                return error
            }
        }
        // Invalid UTF-8 in a string.
        #expect(decodeCheck { $0.writeInteger(UInt16(2)); $0.writeBytes([0xC3, 0x28]) }?.message == "account is not valid UTF-8")
        // A presence byte that is neither 0 nor 1.
        #expect(decodeCheck { $0.writeWireString("a"); $0.writeInteger(UInt8(2)) }?.message == "member has presence byte 2; must be 0 or 1")
        // A string length past the end of the body.
        #expect(decodeCheck { $0.writeInteger(UInt16(40)); $0.writeBytes([0x61]) }?.message == "account is cut short")
        #expect(throws: WireError.self) { _ = try WireRequest.decode(opcode: 0x7E, body: ByteBuffer()) }
        #expect(throws: WireError.self) { _ = try WireRequest.decode(opcode: Opcode.error.rawValue, body: ByteBuffer()) }
    }

    @Test func batchesAreBounded() throws {
        let item = WireRequest.check(Samples.acmeRequest)
        var body = ByteBuffer()
        WireRequest.batch(Array(repeating: item, count: 3)).encodeBody(into: &body)
        #expect(try WireRequest.decode(opcode: Opcode.batch.rawValue, body: body, limits: WireLimits(maxBatchItems: 3)) == .batch([item, item, item]))
        #expect(throws: WireError.self) { _ = try WireRequest.decode(opcode: Opcode.batch.rawValue, body: body, limits: WireLimits(maxBatchItems: 2)) }
        var nested = ByteBuffer()
        WireRequest.batch([.ping]).encodeBody(into: &nested)
        #expect(throws: WireError.self) { _ = try WireRequest.decode(opcode: Opcode.batch.rawValue, body: nested) }
        var empty = ByteBuffer()
        empty.writeInteger(UInt16(0))
        #expect(throws: WireError.self) { _ = try WireRequest.decode(opcode: Opcode.batch.rawValue, body: empty) }
    }
}
