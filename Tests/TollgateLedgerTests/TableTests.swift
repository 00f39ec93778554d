import Testing
import TollgateLedgerTestSupport
@testable import TollgateLedger

/// The ledger's tables against plain models: a chunked array against an array, the hold
/// table against a dictionary, under random operations, with copies taken along the way (as a
/// checkpoint takes them) that must not change when the original does.
@Suite struct TableTests {
    @Test(arguments: [1, 2, 3, 4, 5, 6] as [UInt64])
    func aChunkedArrayBehavesAsAnArray(seed: UInt64) async {
        let failures = await OffPool.cpu("chunked-\(seed)") { Self.chunkedArrayRun(seed: seed) }
        #expect(failures.isEmpty, "\(failures.prefix(5))")
    }

    static func chunkedArrayRun(seed: UInt64) -> [String] {
        var random = SeededGenerator(seed: seed)
        var table = ChunkedArray<Int>()
        var model: [Int] = []
        var copies: [(ChunkedArray<Int>, [Int])] = []
        var failures: [String] = []
        var next = 0
        for step in 0..<4_000 {
            switch Int.random(in: 0..<100, using: &random) {
            case 0..<45:
                // Runs of appends, long enough to start chunks.
                for _ in 0..<Int.random(in: 1...700, using: &random) {
                    next += 1
                    table.append(next)
                    model.append(next)
                }
            case 45..<65 where !model.isEmpty:
                let k = Int.random(in: 0...min(model.count, 1_500), using: &random)
                table.removeFirst(k)
                model.removeFirst(k)
            case 65..<75 where !model.isEmpty:
                if table.removeLast() != model.removeLast() { failures.append("step \(step): removeLast") }
            case 75..<85 where !model.isEmpty:
                let k = Int.random(in: 0...min(model.count, 1_500), using: &random)
                table.removeLast(k)
                model.removeLast(k)
            case 85..<92 where !model.isEmpty:
                let index = Int.random(in: 0..<model.count, using: &random)
                next += 1
                table[index] = next
                model[index] = next
            case 92..<95:
                if copies.count > 3 { copies.removeFirst() }
                copies.append((table, model))
            case 95..<97:
                // Emptied from either end, then used again.
                if Bool.random(using: &random) { table.removeFirst(table.count) } else { table.removeLast(table.count) }
                model.removeAll()
            default:
                continue
            }
            if table.count != model.count || (step % 25 == 0 && !table.elementsEqual(model)) || table.last != model.last || table.first != model.first {
                failures.append("step \(step): \(table.count) elements, the model has \(model.count)")
                break
            }
        }
        for (index, (copy, expected)) in copies.enumerated() where !copy.elementsEqual(expected) {
            failures.append("copy \(index) changed after it was taken")
        }
        return failures
    }

    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func theHoldTableBehavesAsADictionary(seed: UInt64) async {
        let failures = await OffPool.cpu("holds-\(seed)") { Self.holdTableRun(seed: seed) }
        #expect(failures.isEmpty, "\(failures.prefix(5))")
    }

    static func hold(_ id: HoldID, _ held: Credits) -> HoldRecord {
        var draws = DrawList()
        for grant in 0..<Int32(id % 7) { draws.append(Draw(grant: grant, amount: 1)) }
        return HoldRecord(
            id: id, account: Int32(id % 5), member: noSlot, product: "product-\(id)", quantity: 1, creditsPerUnit: held,
            original: held, held: held, createdAt: .epoch, deadline: .epoch, draws: draws, groups: id % 3 == 0 ? [1, 2] : [])
    }

    static func holdTableRun(seed: UInt64) -> [String] {
        var random = SeededGenerator(seed: seed)
        var table = HoldTable()
        var model: [HoldID: HoldRecord] = [:]
        var copies: [(HoldTable, [HoldID: HoldRecord])] = []
        var failures: [String] = []
        var nextID: HoldID = 1
        for step in 0..<20_000 {
            let open = Array(model.keys)
            switch Int.random(in: 0..<100, using: &random) {
            case 0..<40:
                let record = hold(nextID, Int64.random(in: 1...100, using: &random))
                nextID += 1
                table.insert(record)
                model[record.id] = record
            case 40..<70 where !open.isEmpty:
                let id = open.randomElement(using: &random)!
                if !table.remove(HoldKey(id)) { failures.append("step \(step): hold \(id) was not there to remove") }
                model[id] = nil
            case 70..<85 where !open.isEmpty:
                // A commit: taken out, changed, put back.
                let id = open.randomElement(using: &random)!
                guard let slot = table.slot(of: HoldKey(id)) else { failures.append("step \(step): no slot for \(id)"); break }
                var record = table.take(slot: slot)
                if record != model[id] { failures.append("step \(step): took another record for \(id)") }
                record.held -= 1
                record.committed += 1
                table.put(record, slot: slot)
                model[id] = record
            case 85..<90 where !open.isEmpty:
                let id = open.randomElement(using: &random)!
                table[HoldKey(id)]!.deadline = Instant(microsecondsSinceEpoch: Int64(step))
                model[id]!.deadline = Instant(microsecondsSinceEpoch: Int64(step))
            case 90..<93:
                if copies.count > 3 { copies.removeFirst() }
                copies.append((table, model))
            case 93..<95:
                if table.remove(HoldKey(nextID + 1_000)) { failures.append("step \(step): removed a hold never added") }
            default:
                continue
            }
            if table.count != model.count {
                failures.append("step \(step): \(table.count) holds, the model has \(model.count)")
                break
            }
            if step % 500 == 0 || step == 19_999 {
                for (id, record) in model where table[HoldKey(id)] != record { failures.append("step \(step): hold \(id) differs") }
                if Set(table.values.map(\.id)) != Set(model.keys) { failures.append("step \(step): the values are not the model's") }
            }
        }
        for (index, (copy, expected)) in copies.enumerated() {
            if copy.count != expected.count || expected.contains(where: { copy[HoldKey($0.key)] != $0.value }) {
                failures.append("copy \(index) changed after it was taken")
            }
        }
        // The same holds in other slots are the same table.
        var rebuilt = HoldTable()
        for id in model.keys.sorted(by: >) { rebuilt.insert(model[id]!) }
        if rebuilt != table { failures.append("a table with the same holds in other slots is not equal") }
        return failures
    }
}
