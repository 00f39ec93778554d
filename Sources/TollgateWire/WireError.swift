/// The status codes of proto/PROTOCOL.md §7.1 that are not ledger refusals (1–23 are
/// `LedgerError.Code`).
public enum ProtocolStatus: UInt16, Hashable, Sendable, CaseIterable {
    case malformedFrame = 100
    case unsupportedVersion = 101
    case unknownOpcode = 102
    case frameTooLarge = 103
    case tooManyInFlight = 104
    case tooManyConnections = 105
    case idleTimeout = 106
    case handshakeRequired = 107
    case unavailable = 108
    case unauthorized = 109
    case forbidden = 110
    case internalError = 111
    case badFrame = 112
    /// In a cluster: this node does not lead the shard. The message names the leader
    /// (proto/PROTOCOL.md §7.1): `leader NODE at HOST:PORT`, or `no leader yet`.
    case notLeader = 113

    public var name: String {
        switch self {
        case .malformedFrame: "malformedFrame"
        case .unsupportedVersion: "unsupportedVersion"
        case .unknownOpcode: "unknownOpcode"
        case .frameTooLarge: "frameTooLarge"
        case .tooManyInFlight: "tooManyInFlight"
        case .tooManyConnections: "tooManyConnections"
        case .idleTimeout: "idleTimeout"
        case .handshakeRequired: "handshakeRequired"
        case .unavailable: "unavailable"
        case .unauthorized: "unauthorized"
        case .forbidden: "forbidden"
        case .internalError: "internalError"
        case .badFrame: "badFrame"
        case .notLeader: "notLeader"
        }
    }

    /// Whether the server closes the connection after sending this status.
    public var closesConnection: Bool {
        switch self {
        case .unsupportedVersion, .frameTooLarge, .tooManyConnections, .idleTimeout, .handshakeRequired, .unauthorized, .badFrame:
            true
        default:
            false
        }
    }
}

extension WireError {
    /// The `notLeader` refusal that names the shard's leader, if one is known.
    public static func notLeader(node: String?, address: String?, shard: String) -> WireError {
        if let node, let address {
            return WireError(.notLeader, "leader \(node) at \(address): this node does not lead shard \(shard)")
        }
        return WireError(.notLeader, "no leader yet: shard \(shard) is electing one; retry shortly")
    }

    /// The leader's address a `notLeader` message names (HOST:PORT), if it names one.
    public var leaderAddress: String? {
        guard status == .notLeader, message.hasPrefix("leader ") else { return nil }
        let words = message.split(separator: " ", maxSplits: 4)
        guard words.count >= 4, words[2] == "at" else { return nil }
        var address = words[3]
        if address.hasSuffix(":") { address = address.dropLast() }
        return String(address)
    }
}

/// Every way bytes can fail to be a valid frame or body, with a sentence for the error body.
public struct WireError: Error, Hashable, Sendable, CustomStringConvertible {
    public var status: ProtocolStatus
    public var message: String

    public init(_ status: ProtocolStatus, _ message: String) {
        self.status = status
        self.message = message
    }

    public var description: String { "\(status.name): \(message)" }
}
