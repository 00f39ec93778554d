/// The open holds: each record lives in a slot of a chunked slab and stays there until the hold
/// is resolved; a sharded index maps a hold id to its slot.
///
/// A hold record is 176 bytes (`MemoryLayout`) with three references (product, spilled draws, groups).
/// Kept as the values of a dictionary, every reserve copied it into the table, every commit
/// copied it out and again out of `removeValue`, and each copy retained and released its
/// references: about 2,900 instructions per reserve+commit pair under callgrind (insert 1,349,
/// remove 879, the commit's look-up and copy 643), now about 1,400 (bench/README.md, "The
/// decision path, first steps"). Here the index holds 4-byte slots, a record is written once
/// where it stays, and a commit moves it out of its slot and back.
///
/// A checkpoint's copy of the ledger shares both parts; the first change after it copies one
/// index shard and one 1,024-record chunk, as the other tables do.
struct HoldTable: Hashable, Sendable {
    private var records = ChunkedArray<HoldRecord>()
    /// The last slot freed; each free slot's record names the one freed before it (`nextFree`),
    /// so reusing slots needs no list of its own.
    private var firstFree: Int32 = noSlot
    private var slots = ShardedTable<HoldKey, Int32>()

    init() {}

    var count: Int { slots.count }
    var isEmpty: Bool { slots.isEmpty }

    /// The same holds, whatever slots they sit in.
    static func == (lhs: HoldTable, rhs: HoldTable) -> Bool {
        guard lhs.count == rhs.count else { return false }
        for (key, slot) in lhs.slots.entries where rhs[key] != lhs.records[Int(slot)] { return false }
        return true
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(count)
    }

    subscript(key: HoldKey) -> HoldRecord? {
        get {
            guard let slot = slots[key] else { return nil }
            return records[Int(slot)]
        }
        set {
            if let newValue {
                precondition(newValue.id == key.id, "a hold is kept under its own id")
                if let slot = slots[key] { records[Int(slot)] = newValue } else { insert(newValue) }
            } else {
                remove(key)
            }
        }
    }

    /// The slot of an open hold, for reading or changing it in place with `subscript(slot:)`.
    func slot(of key: HoldKey) -> Int32? { slots[key] }

    subscript(slot slot: Int32) -> HoldRecord {
        get { records[Int(slot)] }
        _modify { yield &records[Int(slot)] }
    }

    /// Moves the record out of a slot, leaving an empty one, for a change that would otherwise
    /// copy it; `put` moves it back, `remove` frees the slot.
    mutating func take(slot: Int32) -> HoldRecord {
        var record = HoldRecord.vacant(nextFree: noSlot)
        swap(&record, &records[Int(slot)])
        return record
    }

    mutating func put(_ record: HoldRecord, slot: Int32) {
        records[Int(slot)] = record
    }

    /// Adds a hold whose id the table does not hold.
    mutating func insert(_ record: HoldRecord) {
        let slot: Int32
        if firstFree != noSlot {
            slot = firstFree
            firstFree = HoldRecord.nextFree(records[Int(slot)])
            records[Int(slot)] = record
        } else {
            slot = Int32(records.count)
            records.append(record)
        }
        slots[HoldKey(record.id)] = slot
    }

    /// Takes a hold out, returning whether it was there. Its slot keeps an empty record, so the
    /// hold's references are released now.
    @discardableResult
    mutating func remove(_ key: HoldKey) -> Bool {
        guard let slot = slots.removeValue(forKey: key) else { return false }
        records[Int(slot)] = HoldRecord.vacant(nextFree: firstFree)
        firstFree = slot
        return true
    }

    /// Every open hold (no meaningful order).
    var values: [HoldRecord] {
        slots.entries.map { records[Int($0.value)] }
    }

    mutating func reserveCapacity(_ capacity: Int) {
        records.reserveCapacity(capacity)
        slots.reserveCapacity(capacity)
    }
}

extension HoldRecord {
    /// What a free slot holds: no hold (no hold has id 0), and in `account` the slot freed
    /// before it.
    static func vacant(nextFree: Int32) -> HoldRecord {
        HoldRecord(
            id: 0, account: nextFree, member: noSlot, product: "", quantity: 0, creditsPerUnit: 0, original: 0, held: 0,
            createdAt: .epoch, deadline: .epoch, draws: DrawList())
    }

    static func nextFree(_ vacant: HoldRecord) -> Int32 { vacant.account }
}
