import TollgateLedgerTestSupport

// Runs the benchmark workload for a while under a profiler, for example:
//   swift build -c release --product tollgate-ledger-profile
//   perf record -e cpu-clock -g .build/release/tollgate-ledger-profile reserve+commit 2000000 [accounts]
let arguments = CommandLine.arguments
let operation = arguments.count > 1 ? arguments[1] : "reserve+commit"
let count = arguments.count > 2 ? Int(arguments[2]) ?? 1_000_000 : 1_000_000
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
