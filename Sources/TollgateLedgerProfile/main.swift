import Foundation
import TollgateLedger
import TollgateLedgerTestSupport

#if canImport(Glibc)
import Glibc
#endif

// Runs the benchmark workload alone, for a profiler, or measures memory:
//   swift build -c release --product tollgate-ledger-profile
//   perf record -e cpu-clock -g .build/release/tollgate-ledger-profile reserve+commit 2000000 [accounts]
//   .build/release/tollgate-ledger-profile keys 1000000     # resident memory per remembered key
//   .build/release/tollgate-ledger-profile checkpoint 1000000   # checkpoint pause, size and speed
let arguments = CommandLine.arguments
let operation = arguments.count > 1 ? arguments[1] : "reserve+commit"
let count = arguments.count > 2 ? Int(arguments[2]) ?? 1_000_000 : 1_000_000

/// Resident set size in bytes, from /proc/self/statm (its second field, in pages).
func residentBytes() -> Int {
    guard let file = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(file) }
    var buffer = [UInt8](repeating: 0, count: 128)
    let read = fread(&buffer, 1, buffer.count - 1, file)
    let fields = String(decoding: buffer[0..<read], as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

if operation == "checkpoint" {
    // The costs of a checkpoint of a ledger with `count` accounts (one member each): the pause
    // the first decision after the copy takes (copy-on-write of what it touches), encoding,
    // and reading back.
    var ledger = Fixtures.large(accounts: count, membersPerAccount: 1)
    let request = DecisionRequest(account: "a0", member: "m0", product: "p", quantity: 1)
    var now = ledger.clock
    func decide(_ key: String) -> Duration {
        now = now.adding(microseconds: 1)
        let started = ContinuousClock.now
        _ = ledger.apply(.spend(Spend(request)), key: key, at: now)
        return ContinuousClock.now - started
    }
    let before = decide("warm")
    let copy = ledger
    let pause = decide("after-copy")
    let next = decide("after-copy-2")
    var started = ContinuousClock.now
    let bytes = copy.snapshot()
    let encode = ContinuousClock.now - started
    started = ContinuousClock.now
    let restored = try Ledger(snapshot: bytes)
    let decode = ContinuousClock.now - started
    precondition(restored == copy)
    print("\(count) accounts: decision before the copy \(Int(seconds(before) * 1e6)) µs, first after \(Int(seconds(pause) * 1e6)) µs, second after \(Int(seconds(next) * 1e6)) µs; snapshot \(bytes.count / 1_048_576) MiB encoded in \(String(format: "%.2f", seconds(encode))) s, read back in \(String(format: "%.2f", seconds(decode))) s")
} else if operation == "keys" {
    // Spends under distinct keys with the default 24 h retention: every key stays remembered.
    var ledger = Fixtures.large(accounts: 1, membersPerAccount: 1)
    var now = ledger.clock
    let before = residentBytes()
    for index in 0..<count {
        now = now.adding(microseconds: 1)
        let answer = ledger.apply(
            .spend(Spend(DecisionRequest(account: "a0", member: "m0", product: "p", quantity: 1))),
            key: "agent-7f3c2a91-\(index)", at: now)
        precondition(!answer.isRefused, "spend refused: \(answer)")
    }
    let after = residentBytes()
    print("\(ledger.idempotencyKeyCount) keys remembered; resident memory grew \((after - before) / 1_048_576) MiB, \((after - before) / max(1, count)) bytes per key")
} else {
    let accounts = arguments.count > 3 ? Int(arguments[3]) ?? 100_000 : 100_000
    let workload = LedgerWorkload(accounts: accounts)
    for _ in 0..<count {
        switch operation {
        case "spend": workload.spend()
        case "check": workload.check()
        default: workload.reserveAndCommit()
        }
    }
    print("\(operation) × \(count): \(workload.ledger.openHoldCount) holds open, \(workload.ledger.idempotencyKeyCount) keys remembered")
}
