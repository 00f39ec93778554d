import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// Logs as JSON lines, one object per message, for log pipelines (`--log-format json`):
/// `{"time":"2026-12-03T12:00:00.000123Z","level":"info","label":"tollgated","message":"…",
/// "source":"TollgateServer", …metadata}`. Metadata keys that would collide with those five
/// are prefixed with `meta.`. Each line is written whole, under a lock shared by every handler.
public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let write: @Sendable (String) -> Void

    static let lock = Mutex(())

    /// A handler writing to standard error.
    public static func standardError(label: String) -> JSONLogHandler {
        JSONLogHandler(label: label) { line in
            // Straight to descriptor 2: a failed write (a closed stream) drops the line, never
            // raises (FileHandle's write would).
            lock.withLock { _ in
                var text = line
                text.withUTF8 { bytes in
                    var offset = 0
                    while offset < bytes.count {
                        let written = Glibc.write(2, bytes.baseAddress! + offset, bytes.count - offset)
                        if written < 0 && errno == EINTR { continue }
                        if written <= 0 { return }
                        offset += written
                    }
                }
            }
        }
    }

    public init(label: String, write: @escaping @Sendable (String) -> Void) {
        self.label = label
        self.write = write
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields: [(String, String)] = [
            ("time", Self.timestamp(Date())), ("level", event.level.rawValue), ("label", label), ("message", "\(event.message)"), ("source", event.source),
        ]
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let reserved: Set<String> = ["time", "level", "label", "message", "source"]
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            fields.append((reserved.contains(key) ? "meta." + key : key, Self.text(value)))
        }
        var line = "{"
        for (index, field) in fields.enumerated() {
            if index > 0 { line += "," }
            line += Self.quoted(field.0) + ":" + Self.quoted(field.1)
        }
        write(line + "}\n")
    }

    static func text(_ value: Logger.Metadata.Value) -> String {
        switch value {
        case .string(let string): string
        case .stringConvertible(let convertible): convertible.description
        case .array(let values): "[" + values.map(text).joined(separator: ", ") + "]"
        case .dictionary(let values): "{" + values.sorted { $0.key < $1.key }.map { "\($0.key): \(text($0.value))" }.joined(separator: ", ") + "}"
        }
    }

    /// A JSON string: quotes, backslashes and control characters escaped, the rest as is.
    static func quoted(_ string: String) -> String {
        var out = "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let control where control.value < 0x20 || control.value == 0x7F:
                let hex = String(control.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// UTC, to the microsecond. The wall clock is outside input: one set before 1970 or past
    /// what an Int64 of microseconds holds is written as it is, never a trap.
    static func timestamp(_ date: Date) -> String {
        let raw = (date.timeIntervalSince1970 * 1_000_000).rounded(.down)
        let microseconds = raw.isFinite && abs(raw) < 9.0e18 ? Int64(raw) : 0
        // Floor division, so that the fraction is 0 to 999,999 on both sides of 1970.
        let (quotient, remainder) = microseconds.quotientAndRemainder(dividingBy: 1_000_000)
        var seconds = time_t(remainder < 0 ? quotient - 1 : quotient)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        let fraction = String(remainder < 0 ? remainder + 1_000_000 : remainder)
        func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))."
            + String(repeating: "0", count: 6 - fraction.count) + fraction + "Z"
    }
}
