import TollgateLedger
import TollgateWire

/// What a call can fail with, mirroring the status table of proto/PROTOCOL.md §7.1.
public enum TollgateError: Error, Hashable, Sendable, CustomStringConvertible {
    /// The ledger refused (status 1–24): the code, the level and subject, and the headroom.
    case refused(Refusal)
    /// The server reported a protocol error (status 100 and up).
    case server(WireError)
    /// No connection could be made, or it was lost with the request unanswered.
    case connection(String)
    /// No answer before the call's deadline.
    case timeout
    /// The server answered with something this client does not expect for the request.
    case unexpectedResponse(String)
    /// TLS could not be set up: unreadable certificate files, or a handshake the server or
    /// this client refused (unknown CA, expired certificate, name mismatch). Not retried.
    case tls(String)

    /// The numeric status, when the server gave one.
    public var status: UInt16? {
        switch self {
        case .refused(let refusal): refusal.error.code.rawValue
        case .server(let error): error.status.rawValue
        default: nil
        }
    }

    /// Whether sending the same request again (with the same idempotency key) may succeed.
    public var isRetriable: Bool {
        switch self {
        case .connection, .timeout: true
        // notLeader: in a cluster, during an election (a router follows the leader itself).
        case .server(let error): [.unavailable, .internalError, .tooManyInFlight, .notLeader].contains(error.status)
        default: false
        }
    }

    public var description: String {
        switch self {
        case .refused(let refusal): "refused: \(refusal.error)"
        case .server(let error): "server error \(error.status.rawValue) \(error)"
        case .connection(let reason): "connection: \(reason)"
        case .timeout: "timed out"
        case .unexpectedResponse(let what): "unexpected response: \(what)"
        case .tls(let reason): "TLS: \(reason)"
        }
    }
}
