import ArgumentParser
import Foundation
import TollgateServer

/// `tollgate token`: makes a token and the credentials-file entry that admits it, and checks
/// a credentials file the way the server reads it.
struct TokenCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token", abstract: "Make a token for the credentials file, or check a credentials file.",
        subcommands: [New.self, Check.self])

    struct New: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a new random token and the credentials entry (with its SHA-256, not the token) that admits it.")
        @Option(help: "The identity's name, as logs and metrics will show it.") var name: String
        @Option(help: "admin, gate or read.") var role: String
        @Option(help: "An account it may touch (repeat for several); '*' for every account.") var account: [String] = []
        @Option(help: "It may touch accounts starting with this.") var accountPrefix: String?
        @Option(help: "Write the token to this file (mode 0600) instead of printing it.") var out: String?

        func run() throws {
            guard Role(name: role) != nil else { throw ValidationError("--role must be admin, gate or read") }
            var generator = SystemRandomNumberGenerator()
            let token = "tg_" + (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
            var entry = "  - name: \(name)\n    tokenSha256: \(SHA256.hex(Array(token.utf8)))\n    role: \(role)\n"
            if account == ["*"] {
                entry += "    accounts: \"*\"\n"
            } else if !account.isEmpty {
                entry += "    accounts: [\(account.joined(separator: ", "))]\n"
            }
            if let accountPrefix { entry += "    accountPrefix: \"\(accountPrefix)\"\n" }
            // Check the entry the way the server will read it.
            do {
                _ = try Credentials.parse(yaml: "identities:\n" + entry, source: "the new entry")
            } catch {
                throw ValidationError("\(error)")
            }
            if let out {
                guard FileManager.default.createFile(atPath: out, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
                    throw ValidationError("cannot write \(out)")
                }
                print("# token written to \(out); add this under identities: in the credentials file")
            } else {
                print("token: \(token)")
                print("# add this under identities: in the credentials file")
            }
            print(entry, terminator: "")
        }
    }

    struct Check: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Read a credentials file as tollgated would and list its identities.")
        @Argument(help: "The credentials file (YAML).") var file: String

        func run() throws {
            guard let text = try? String(contentsOfFile: file, encoding: .utf8) else { throw ValidationError("cannot read \(file)") }
            let credentials: Credentials
            do {
                credentials = try Credentials.parse(yaml: text, source: file)
            } catch {
                throw ValidationError("\(error)")
            }
            var lines: [String] = []
            for (name, principal) in credentials.byCertificate.sorted(by: { $0.key < $1.key }) {
                lines.append("certificate \(name): \(principal.name), \(principal.role), \(principal.scope)")
            }
            for principal in credentials.byTokenDigest.values.sorted(by: { $0.name < $1.name }) {
                lines.append("token: \(principal.name), \(principal.role), \(principal.scope)")
            }
            if let anonymous = credentials.anonymous {
                lines.append("anonymous: \(anonymous.role), \(anonymous.scope)")
            } else {
                lines.append("anonymous: refused")
            }
            print(lines.joined(separator: "\n"))
        }
    }
}
