/// An array kept in chunks of 1,024 elements, for the ledger's big tables.
///
/// A copy of the ledger (a checkpoint takes one) shares storage with the original until
/// either changes; with one flat array, the first change after the copy would copy the whole
/// table — measured at 1.2 s for a million accounts. Here it copies the list of chunks and the
/// one chunk it touches. `removeFirst` is cheap too, so the type also serves as a queue.
/// Smaller chunks make that copy smaller and the list longer: 4,096-element chunks of a
/// million accounts' records made the first reserve after a copy take milliseconds; 512 was
/// no faster there, and every chunk a growing table starts is an allocation (bench/README.md,
/// "Checkpoints").
struct ChunkedArray<Element: Hashable & Sendable>: RandomAccessCollection, MutableCollection, Hashable, Sendable, ExpressibleByArrayLiteral {
    private static var shift: Int { 10 }
    private static var chunkSize: Int { 1 << shift }

    /// Each holds `chunkSize` elements but the first (which may start at `base`) and the last;
    /// empty chunks may follow the last element, kept for the next ones.
    private var chunks: [[Element]] = []
    /// Where element 0 sits in the first chunk (elements before it were removed from the front).
    private var base = 0
    private(set) var count = 0

    init() {}

    init(arrayLiteral elements: Element...) {
        self.init(elements)
    }

    init(_ elements: some Sequence<Element>) {
        for element in elements { append(element) }
    }

    init(repeating element: Element, count: Int) {
        var remaining = count
        while remaining > 0 {
            let size = Swift.min(remaining, Self.chunkSize)
            var chunk = [Element](repeating: element, count: size)
            if size < Self.chunkSize { chunk.reserveCapacity(Self.chunkSize) }
            chunks.append(chunk)
            remaining -= size
        }
        self.count = count
    }

    var startIndex: Int { 0 }
    var endIndex: Int { count }

    func index(after index: Int) -> Int { index + 1 }
    func index(before index: Int) -> Int { index - 1 }

    // The chunks' own bounds checks catch an index past the end; an index below zero can
    // only reach elements already removed from the front, which queues never index.
    @inline(__always)
    subscript(position: Int) -> Element {
        get {
            let physical = base &+ position
            return chunks[physical >> Self.shift][physical & (Self.chunkSize - 1)]
        }
        _modify {
            let physical = base &+ position
            yield &chunks[physical >> Self.shift][physical & (Self.chunkSize - 1)]
        }
    }

    mutating func append(_ element: Element) {
        let physical = base + count
        if physical >> Self.shift == chunks.count {
            var chunk: [Element] = []
            chunk.reserveCapacity(Self.chunkSize)
            chunks.append(chunk)
        }
        chunks[physical >> Self.shift].append(element)
        count += 1
    }

    mutating func removeFirst(_ k: Int) {
        precondition(k >= 0 && k <= count, "removing more than the chunked array holds")
        base += k
        count -= k
        if count == 0 {
            let first = takeFirstChunk()
            chunks.removeAll(keepingCapacity: true)
            if let first { chunks.append(first) }
            base = 0
            return
        }
        if base >= Self.chunkSize {
            let first = takeFirstChunk()
            chunks.removeFirst(base >> Self.shift)
            base &= Self.chunkSize - 1
            // One emptied chunk is kept past the last element, unless one is there already.
            if let first, chunks.count == (base + count - 1) >> Self.shift + 1 { chunks.append(first) }
        }
    }

    /// The first chunk's buffer, emptied, to be kept past the last element for the next chunk
    /// to start in: a queue (idempotency keys, resolved holds) then turns over without
    /// allocating. Nil if it is not a whole chunk's buffer. If a copy of the array (a
    /// checkpoint's) still shares it, emptying allocates a new buffer, which the next chunk
    /// would have allocated anyway.
    @inline(never)
    private mutating func takeFirstChunk() -> [Element]? {
        guard !chunks.isEmpty, chunks[0].capacity >= Self.chunkSize else { return nil }
        var chunk: [Element] = []
        swap(&chunk, &chunks[0])
        chunk.removeAll(keepingCapacity: true)
        return chunk
    }

    mutating func popFirst() -> Element? {
        guard let element = first else { return nil }
        removeFirst(1)
        return element
    }

    @discardableResult
    mutating func removeLast() -> Element {
        precondition(count > 0, "removing from an empty chunked array")
        let element = self[count - 1]
        removeLast(1)
        return element
    }

    /// Removes the last `k` elements, keeping the chunks they emptied for the elements that
    /// follow: a heap that is compacted and grows again (the ledger's event queue) then
    /// allocates nothing.
    mutating func removeLast(_ k: Int) {
        precondition(k >= 0 && k <= count, "removing more than the chunked array holds")
        guard k > 0 else { return }
        count -= k
        let end = base + count
        // With nothing left, the first chunk may still hold what was removed from the front.
        let last = count == 0 ? 0 : (end - 1) >> Self.shift
        let keep = count == 0 ? 0 : (end - 1) & (Self.chunkSize - 1) + 1
        chunks[last].removeLast(chunks[last].count - keep)
        for index in (last + 1)..<chunks.count where !chunks[index].isEmpty {
            chunks[index].removeAll(keepingCapacity: true)
        }
        if count == 0 { base = 0 }
    }

    mutating func reserveCapacity(_ capacity: Int) {
        chunks.reserveCapacity(capacity >> Self.shift + 1)
    }

    static func == (lhs: ChunkedArray, rhs: ChunkedArray) -> Bool {
        lhs.count == rhs.count && lhs.elementsEqual(rhs)
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(count)
    }
}
