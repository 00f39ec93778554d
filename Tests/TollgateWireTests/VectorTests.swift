import Foundation
import NIOCore
import Testing
import TollgateLedger
import TollgateWire

/// proto/vectors.json: frames as hex with their decoded meaning. Each is decoded and its
/// meaning compared, then encoded back to the same bytes. The file is generated from
/// `Samples`; `TOLLGATE_WRITE_VECTORS=1 swift test --filter VectorTests` rewrites it.
@Suite struct VectorTests {
    struct Vector: Codable, Equatable {
        var name: String
        var direction: String
        var hex: String
        var meaning: String
    }

    static let path = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("proto/vectors.json")

    static func hex(_ buffer: ByteBuffer) -> String {
        buffer.readableBytesView.map { byte in
            let digits = String(byte, radix: 16)
            return digits.count == 1 ? "0" + digits : digits
        }.joined()
    }

    static func bytes(_ hex: String) -> ByteBuffer {
        var buffer = ByteBuffer()
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            buffer.writeInteger(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return buffer
    }

    /// Decodes one frame's bytes to its meaning, requiring that nothing is left over.
    static func meaning(of hex: String, direction: String) throws -> (String, ByteBuffer) {
        var buffer = bytes(hex)
        let decoder = FrameDecoder(maxBodyLength: 1 << 20, expectsResponses: direction == "response")
        let frame = try #require(try decoder.nextFrame(&buffer))
        #expect(buffer.readableBytes == 0)
        if direction == "request" {
            let request = try WireRequest.decode(opcode: frame.header.opcode, body: frame.body)
            return (WireText.describe(frame.header, request: request), request.frame(requestID: frame.header.requestID).bytes)
        }
        let response = try WireResponse.decode(opcode: frame.header.opcode, status: frame.header.status, body: frame.body)
        let opcode = try #require(Opcode(rawValue: frame.header.opcode))
        return (WireText.describe(frame.header, response: response), response.frame(opcode: opcode, requestID: frame.header.requestID).bytes)
    }

    static func generated() throws -> [Vector] {
        try Samples.all.map { sample in
            let hex = hex(sample.frame.bytes)
            let (meaning, _) = try meaning(of: hex, direction: sample.direction.rawValue)
            return Vector(name: sample.name, direction: sample.direction.rawValue, hex: hex, meaning: meaning)
        }
    }

    @Test func theCommittedVectorsAreTheSamples() throws {
        let generated = try Self.generated()
        if ProcessInfo.processInfo.environment["TOLLGATE_WRITE_VECTORS"] == "1" {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            try (encoder.encode(generated) + Data("\n".utf8)).write(to: Self.path)
        }
        let committed = try JSONDecoder().decode([Vector].self, from: Data(contentsOf: Self.path))
        #expect(committed == generated, "proto/vectors.json is stale: run TOLLGATE_WRITE_VECTORS=1 swift test --filter VectorTests")
    }

    @Test func everyVectorDecodesToItsMeaningAndEncodesBackToItsBytes() throws {
        let vectors = try JSONDecoder().decode([Vector].self, from: Data(contentsOf: Self.path))
        #expect(vectors.count >= 50)
        for vector in vectors {
            let (meaning, reencoded) = try Self.meaning(of: vector.hex, direction: vector.direction)
            #expect(meaning == vector.meaning, "\(vector.name)")
            #expect(Self.hex(reencoded) == vector.hex, "\(vector.name)")
        }
    }

    @Test func everyOpcodeHasARequestVector() throws {
        let vectors = try JSONDecoder().decode([Vector].self, from: Data(contentsOf: Self.path))
        let requestOpcodes = Set(vectors.filter { $0.direction == "request" }.map { String($0.hex.dropFirst(6).prefix(2)) })
        for opcode in Opcode.allCases where opcode != .error && opcode != .event {
            let hex = String(opcode.rawValue, radix: 16)
            #expect(requestOpcodes.contains(hex.count == 1 ? "0" + hex : hex), "no request vector for \(opcode.name)")
        }
    }
}
