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
//   .build/release/tollgate-ledger-profile checkpoint-holds 300000 1000000   # the pause with holds open [accounts [repeats]]
let arguments = CommandLine.arguments
let operation = arguments.count > 1 ? arguments[1] : "reserve+commit"
let count = arguments.count > 2 ? Int(arguments[2]) ?? 1_000_000 : 1_000_000

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
} else if operation == "checkpoint-holds" {
    // The pause a checkpoint causes with `count` holds open and as many resolved ones
    // remembered: the first reserve and the first commit after the copy change both tables.
    // Beside it, in the same run, the baseline of a flat dictionary of as many 64-byte
    // entries, copied whole by its first change after a copy (what the tables were).
    // checkpoint-holds HOLDS [ACCOUNTS [REPEATS]]: the copy and the first changes after it
    // REPEATS times (one copy alive at a time, as a checkpoint's), for a profiler; the figures
    // printed are the longest of the repeats.
    let accounts = arguments.count > 3 ? max(1, Int(arguments[3]) ?? 1) : max(1, count / 5_000)
    let repeats = arguments.count > 4 ? max(1, Int(arguments[4]) ?? 1) : 1
    var ledger = Fixtures.large(accounts: accounts, membersPerAccount: 1)
    var now = ledger.clock
    var key = 0
    func apply(_ command: Command) -> Answer {
        key += 1
        now = now.adding(microseconds: 1)
        return ledger.apply(command, key: "h\(key)", at: now)
    }
    var open: [(String, HoldID)] = []
    for index in 0..<(2 * count) {
        let account = "a\(index % accounts)"
        let request = DecisionRequest(account: account, member: "m0", product: "p", quantity: 1)
        guard case .decision(let decision) = apply(.reserve(Reserve(request, ttlMicroseconds: 6 * Microseconds.perDay))), let hold = decision.hold
        else { preconditionFailure("reserve refused") }
        if index % 2 == 0 {
            _ = apply(.commit(Commit(HoldReference(account: account, hold: hold), amount: .held)))
        } else {
            open.append((account, hold))
        }
    }
    func timed(_ body: () -> Void) -> Duration {
        let started = ContinuousClock.now
        body()
        return ContinuousClock.now - started
    }
    let request = DecisionRequest(account: "a0", member: "m0", product: "p", quantity: 1)
    let before = timed { _ = apply(.reserve(Reserve(request, ttlMicroseconds: Microseconds.perMinute))) }
    var copy = ledger
    func micro(_ duration: Duration) -> Int { Int(seconds(duration) * 1e6) }
    var reserves: [Duration] = [], commits: [Duration] = [], nexts: [Duration] = []
    for round in 0..<repeats {
        copy = ledger
        reserves.append(timed { _ = apply(.reserve(Reserve(request, ttlMicroseconds: Microseconds.perMinute))) })
        let (account, hold) = open[round % open.count]
        commits.append(timed { _ = apply(.commit(Commit(HoldReference(account: account, hold: hold), amount: .held))) })
        nexts.append(timed { _ = apply(.reserve(Reserve(request, ttlMicroseconds: Microseconds.perMinute))) })
    }
    let reserve = reserves.max()!, commit = commits.max()!, next = nexts.max()!
    let medians = repeats > 1 ? " (first copy \(micro(reserves[0])) µs, the longest of the others \(micro(reserves.dropFirst().max()!)) µs; medians \(micro(reserves.sorted()[repeats / 2])), \(micro(commits.sorted()[repeats / 2])), \(micro(nexts.sorted()[repeats / 2])) µs)" : ""
    struct Entry: Hashable { var a: UInt64, b: UInt64, c: UInt64, d: UInt64, e: UInt64, f: UInt64, g: UInt64, h: UInt64 }
    var flat: [UInt64: Entry] = [:]
    for index in 0..<UInt64(count) { flat[index] = Entry(a: index, b: 0, c: 0, d: 0, e: 0, f: 0, g: 0, h: 0) }
    let flatCopy = flat
    let flatPause = timed { flat[UInt64(count)] = Entry(a: 0, b: 0, c: 0, d: 0, e: 0, f: 0, g: 0, h: 0) }
    precondition(flatCopy.count + 1 == flat.count && copy.openHoldCount + 1 == ledger.openHoldCount)
    let accountsNote = "\(accounts) accounts, "
    print("\(accountsNote)\(ledger.openHoldCount) holds open, \(count) resolved\(repeats > 1 ? ", longest of \(repeats) copies" : ""): reserve before the copy \(micro(before)) µs; after it, first reserve \(micro(reserve)) µs, first commit \(micro(commit)) µs, next reserve \(micro(next)) µs\(medians); a flat dictionary of \(count) entries: first change after a copy \(micro(flatPause)) µs")
} else if operation == "keys" {
    // Spends under distinct keys with the default 24 h retention, in a table large enough
    // to keep them all in memory: what a key costs in the in-memory tier.
    var limits = LedgerLimits()
    limits.idempotencyKeysMax = max(limits.idempotencyKeysMax, count + 16)
    var ledger = Fixtures.large(accounts: 1, membersPerAccount: 1, limits: limits)
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
