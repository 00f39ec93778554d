import Foundation
import TollgateJournal
import TollgateLedger
import TollgateWire

#if canImport(Glibc)
import Glibc
#endif

/// NODE_FILES and READ_NODE_FILE: what a new replica of a shard copies from a node of it to
/// start from (ClusterBootstrap.swift) — the node's checkpoints and its idempotency keys' runs.
/// Both files are immutable once written and carry their own checksums; a run merged away
/// after it was listed is answered as gone, and its keys are in the run that replaced it.
extension LedgerService {
    /// Whether `name` is one of the files NODE_FILES lists (never a path).
    static func isNodeFileName(_ name: String) -> Bool {
        let checkpoint = name.hasPrefix("checkpoint-") && name.hasSuffix(".tgc")
        let run = name.hasPrefix("keys-") && name.hasSuffix(".tgk")
        return (checkpoint || run) && name.utf8.count <= 64
            && name.utf8.allSatisfy { ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z")) || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }
            && !name.contains("..")
    }

    func nodeFileDirectory(_ name: String) -> String {
        configuration.dataDirectory + (name.hasPrefix("checkpoint-") ? "/journal" : "/keys")
    }

    func nodeFiles() -> WireResponse {
        var files: [NodeFile] = []
        for directory in [configuration.dataDirectory + "/journal", configuration.dataDirectory + "/keys"] {
            let names = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter(Self.isNodeFileName).sorted()
            for name in names {
                var status = stat()
                guard stat(directory + "/" + name, &status) == 0 else { continue }
                files.append(NodeFile(name: name, bytes: UInt64(status.st_size)))
            }
        }
        return .files(files)
    }

    func readNodeFile(name: String, offset: UInt64, length: UInt32) -> WireResponse {
        guard Self.isNodeFileName(name) else {
            return .answer(.refused(Refusal(LedgerError(.invalidArgument, level: .request, subject: "\(name) is not a file NODE_FILES lists"))))
        }
        let path = nodeFileDirectory(name) + "/" + name
        let descriptor = open(path, O_RDONLY)
        guard descriptor >= 0 else {
            return .answer(.refused(Refusal(LedgerError(.invalidArgument, level: .request, subject: "\(name) is gone (merged or pruned since it was listed)"))))
        }
        defer { close(descriptor) }
        // What fits an answer frame, with room for its header fields.
        let room = max(1, min(Int(length), configuration.maxFrameBody - 64))
        guard offset <= UInt64(Int64.max) else { return .transfer([]) }
        var bytes = [UInt8](repeating: 0, count: room)
        let count = bytes.withUnsafeMutableBytes { pread(descriptor, $0.baseAddress, room, off_t(offset)) }
        guard count >= 0 else {
            return .error(WireError(.unavailable, "cannot read \(name): \(String(cString: strerror(errno)))"))
        }
        return .transfer(Array(bytes.prefix(count)))
    }
}
