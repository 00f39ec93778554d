import ArgumentParser
import Foundation
import TollgateJournal
import TollgateLedger
import TollgateWire

/// `tollgate journal verify|dump|export DIRECTORY`: read a journal directory directly (the
/// server need not run; e.g. ./tollgate-data/journal).
struct JournalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "journal", abstract: "Verify, dump or export a journal directory.", subcommands: [Verify.self, Dump.self, Export.self])

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check every record: lengths, checksums, sequence numbers and the chain.",
            discussion: "Exit status: 0 valid, 2 valid but for a torn tail (repaired with --repair), 1 damaged before the tail.")
        @Argument(help: "The journal directory, e.g. ./tollgate-data/journal.") var directory: String
        @Flag(help: "Truncate a torn tail, as tollgated does when it starts.") var repair = false

        func run() throws {
            do {
                var progress = TerminalProgress(unit: "records")
                let scan = try Journal.scan(directory: directory, repair: repair) { _ in progress.advance() }
                progress.finish()
                print("\(scan.records) records in \(scan.segments.count) segments; last sequence \(scan.lastSequence)")
                if let torn = scan.tornTail {
                    print("torn tail in \(torn.file) at byte \(torn.offset): \(torn.reason)\(repair ? " — truncated" : "")")
                    if !repair { throw ExitCode(2) }
                }
            } catch let damage as JournalDamage {
                print("DAMAGED: \(damage)")
                throw ExitCode(1)
            }
        }
    }

    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print every record: sequence, instant, the command and its key.")
        @Argument(help: "The journal directory (DATA_DIR/journal).") var directory: String

        func run() throws {
            do {
                var progress = TerminalProgress(unit: "records", quiet: TerminalProgress.outputIsTerminal)
                _ = try Journal.scan(directory: directory, repair: false) { record in
                    print("\(record.sequence) \(record.instant) \(WireText.describe(command: record.command, key: record.key))")
                    progress.advance()
                }
                progress.finish()
            } catch let damage as JournalDamage {
                print("DAMAGED: \(damage)")
                throw ExitCode(1)
            }
        }
    }

    struct Export: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write every consumption as a JSON line, for billing reconciliation.",
            discussion: """
                Replays the journal and prints one line per spend and per commit: \
                {"type": "consumption", "time", "account", "member", "product", "credits", "hold", "sequence"}. \
                A commit's member and product are those of its hold; a spend has no hold. Events the \
                ledger produced while replaying follow the record that caused them, as in the event log: \
                {"type": "recharged" | "alert" | "depleted", "id", "sequence", ...}; recharges are \
                top-ups to bill.
                """)
        @Argument(help: "The journal directory (DATA_DIR/journal).") var directory: String
        @Option(help: "The shard, for the journal of a cluster's node: its hold and grant ids come from the shard's own space.") var shard: String?

        func run() throws {
            var ledger = Ledger(startingAt: .epoch)
            if let shard { ledger.useIDSpace(tag: Ledger.idSpaceTag(forShard: shard)) }
            var progress = TerminalProgress(unit: "records", quiet: TerminalProgress.outputIsTerminal)
            defer { progress.finish() }
            do {
                _ = try Journal.scan(directory: directory, repair: false) { record in
                    progress.advance()
                    var hold: HoldView?
                    if case .commit(let commit) = record.command { hold = ledger.hold(commit.hold.hold) }
                    let answer = ledger.replay(record.command, key: record.key, at: record.instant).answer
                    let line: [String: Any]? = record.command.consumption(answer: answer, hold: hold).map { consumed in
                        [
                            "account": consumed.account, "member": nullable(consumed.member), "product": nullable(consumed.product),
                            "credits": consumed.credits, "hold": nullable(consumed.hold),
                        ]
                    }
                    if var line {
                        line["type"] = "consumption"
                        line["time"] = record.instant.description
                        line["sequence"] = record.sequence
                        let data = try JSONSerialization.data(withJSONObject: line, options: [.sortedKeys, .withoutEscapingSlashes])
                        print(String(decoding: data, as: UTF8.self))
                    }
                    for event in ledger.takeEvents() {
                        var object = EventsCommand.object(event)
                        object["id"] = "tollgate-event-\(event.sequence)"
                        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
                        print(String(decoding: data, as: UTF8.self))
                    }
                }
            } catch let damage as JournalDamage {
                FileHandle.standardError.write(Data("DAMAGED: \(damage)\n".utf8))
                throw ExitCode(1)
            }
        }
    }
}
