import NIOCore
import TollgateLedger
import TollgateWire

/// What the generator asks: which accounts (one hot pooled account, or many, uniformly or
/// Zipf-skewed), which members, and which operations.
struct Workload: Sendable {
    enum Accounts: String, Sendable, CaseIterable {
        /// One pooled account; every request is a different member of it racing on the pool.
        case hot
        case uniform
        case zipf
    }

    enum Operation: String, Sendable, CaseIterable {
        case spend, check
        /// Reserve, then commit once the hold comes back (each counted as one decision).
        case reserveCommit = "reserve-commit"
        /// 40% check, 30% spend, 20% reserve then commit, 10% reserve then release.
        case mixed
        /// PING: the protocol with no ledger (also what the echo floor answers).
        case ping
    }

    var accounts: Accounts
    var accountCount: Int
    var membersPerAccount: Int
    var operation: Operation
    /// Decisions per frame: 1 sends plain frames, more sends BATCH frames.
    var batch: Int
    var zipfExponent = 1.1

    static func accountName(_ index: Int) -> String { "acct-\(index)" }
    static func memberName(_ index: Int) -> String { "m\(index)" }
    static let product = "p"
}

/// A per-connection source of requests: seeded, so runs are repeatable.
struct RequestSource {
    let workload: Workload
    var random: SplitMix
    let connection: Int
    var counter: UInt64 = 0
    /// Cumulative Zipf probabilities over the accounts (for `.zipf`).
    let zipf: [Double]

    init(workload: Workload, connection: Int, seed: UInt64, zipf: [Double]) {
        self.workload = workload
        self.connection = connection
        self.random = SplitMix(seed: seed &+ UInt64(connection) &* 0x9E37_79B9_7F4A_7C15)
        self.zipf = zipf
    }

    static func zipfTable(count: Int, exponent: Double) -> [Double] {
        var weights = (1...count).map { 1.0 / pow(Double($0), exponent) }
        let total = weights.reduce(0, +)
        var running = 0.0
        for index in weights.indices {
            running += weights[index] / total
            weights[index] = running
        }
        return weights
    }

    /// Unique per run (keys of an earlier run against the same server must not be reused).
    let run = UInt32.random(in: 0...UInt32.max)

    mutating func nextKey() -> String {
        counter += 1
        return "load-\(run)-\(connection)-\(counter)"
    }

    mutating func account() -> String {
        switch workload.accounts {
        case .hot: return Workload.accountName(0)
        case .uniform: return Workload.accountName(Int(random.next() % UInt64(workload.accountCount)))
        case .zipf:
            let draw = random.unit()
            var low = 0
            var high = zipf.count - 1
            while low < high {
                let middle = (low + high) / 2
                if zipf[middle] < draw { low = middle + 1 } else { high = middle }
            }
            return Workload.accountName(low)
        }
    }

    mutating func member() -> String { Workload.memberName(Int(random.next() % UInt64(max(1, workload.membersPerAccount)))) }

    enum Kind: Sendable {
        case plain
        /// The answer carries a hold to commit (true) or release (false).
        case reserve(commit: Bool)
        case followUp
    }

    /// The next request and what to do with its answer.
    mutating func next() -> (WireRequest, Kind) {
        let decision = DecisionRequest(account: account(), member: member(), product: Workload.product, quantity: 1)
        var operation = workload.operation
        if operation == .mixed {
            let roll = random.next() % 10
            operation = roll < 4 ? .check : roll < 7 ? .spend : .reserveCommit
            if roll == 9 { return (.command(.reserve(Reserve(decision, ttlMicroseconds: 60_000_000)), key: nextKey()), .reserve(commit: false)) }
        }
        switch operation {
        case .ping: return (.ping, .plain)
        case .check: return (.check(decision), .plain)
        case .spend: return (.command(.spend(Spend(decision)), key: nextKey()), .plain)
        case .reserveCommit, .mixed:
            return (.command(.reserve(Reserve(decision, ttlMicroseconds: 60_000_000)), key: nextKey()), .reserve(commit: true))
        }
    }

    /// A frame's worth: one request, or a BATCH of `workload.batch` gate requests.
    mutating func nextFrame() -> (WireRequest, Kind, decisions: Int) {
        guard workload.batch > 1, workload.operation != .ping else {
            let (request, kind) = next()
            return (request, kind, 1)
        }
        var items: [WireRequest] = []
        for _ in 0..<workload.batch {
            let decision = DecisionRequest(account: account(), member: member(), product: Workload.product, quantity: 1)
            items.append(workload.operation == .check ? .check(decision) : .command(.spend(Spend(decision)), key: nextKey()))
        }
        return (.batch(items), .plain, workload.batch)
    }
}

/// A small, fast, seeded generator (SplitMix64).
struct SplitMix: Sendable {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    mutating func unit() -> Double { (Double(next() >> 11) + 1) / 9_007_199_254_740_992.0 }
}

#if canImport(Glibc)
import Glibc
#endif
