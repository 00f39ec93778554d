import Foundation
import TollgateLedger

#if canImport(Glibc)
import Glibc
#endif

/// One immutable run of idempotency keys on disk, sorted by digest (proto/JOURNAL.md,
/// "Idempotency keys on disk"):
///
///     pages   each: u32 length, u32 CRC-32C of the entries, entries
///             entry: u64 low, u64 high, u64 fingerprint, i64 decided, u16 n, n bytes of answer
///     index   per page: u64 first entry's low, u64 page offset
///     filter  u64 words: a Bloom filter of 512-bit blocks, 10 bits a key
///     footer  72 bytes: "TGKEYRUN", u32 version 1, u32 level, u64 keys, u64 pages,
///             u64 index offset, u64 filter words, i64 first and i64 last decision instant,
///             u32 CRC-32C of index, filter and the footer's first 64 bytes, u32 zero
///
/// All integers little-endian. The filter and the index stay in memory; a lookup reads one
/// page (two if a page boundary falls among equal lows).
final class KeyRun: Sendable {
    static let magic: [UInt8] = Array("TGKEYRUN".utf8)
    static let footerSize = 72
    static let pageTarget = 8_192
    static let pageMax = 16 << 20
    static let bitsSet = 10

    let id: UInt64
    let level: Int
    let count: Int
    let bytes: Int64
    /// The earliest and latest instants its keys were decided at.
    let firstDecided: Instant
    let lastDecided: Instant
    let path: String
    private let descriptor: Int32
    /// The filter, 64-byte aligned so a key's block is one cache line.
    let filter: FilterWords
    private let firstLows: [UInt64]
    /// Page offsets, and the index's offset last: page i spans offsets[i]..<offsets[i+1].
    private let offsets: [UInt64]

    var memoryBytes: Int { filter.count * 8 + firstLows.count * 8 + offsets.count * 8 + 256 }

    /// Words in a buffer of their own, aligned to a cache line, for the lookups to read
    /// without reference counting (`KeyArchive` keeps each run alive while it is listed).
    final class FilterWords: @unchecked Sendable {
        let base: UnsafeMutablePointer<UInt64>
        let count: Int

        init(_ words: [UInt64]) {
            count = words.count
            let raw = UnsafeMutableRawPointer.allocate(byteCount: max(64, words.count * 8), alignment: 64)
            base = raw.bindMemory(to: UInt64.self, capacity: max(8, words.count))
            base.initialize(repeating: 0, count: max(8, words.count))
            words.withUnsafeBufferPointer { if let source = $0.baseAddress { base.update(from: source, count: words.count) } }
        }

        deinit { UnsafeMutableRawPointer(base).deallocate() }

        var view: FilterView { FilterView(base: UnsafePointer(base), blocks: UInt64(count / 8)) }
    }

    /// A filter as the probe loop reads it: a pointer and a block count, no reference.
    struct FilterView: @unchecked Sendable {
        let base: UnsafePointer<UInt64>
        let blocks: UInt64

        @inline(__always)
        func mayContain(_ key: FilterKey) -> Bool {
            let start = key.blockStart(blocks: blocks)
            let block = UnsafeRawPointer(base + start).load(as: SIMD8<UInt64>.self)
            return (key.mask & ~block) == SIMD8<UInt64>(repeating: 0)
        }
    }

    private init(
        id: UInt64, level: Int, count: Int, bytes: Int64, firstDecided: Instant, lastDecided: Instant, path: String, descriptor: Int32,
        filter: [UInt64], firstLows: [UInt64], offsets: [UInt64]
    ) {
        self.id = id
        self.level = level
        self.count = count
        self.bytes = bytes
        self.firstDecided = firstDecided
        self.lastDecided = lastDecided
        self.path = path
        self.descriptor = descriptor
        self.filter = FilterWords(filter)
        self.firstLows = firstLows
        self.offsets = offsets
    }

    deinit { Glibc.close(descriptor) }

    // MARK: - The filter

    static func filterWords(forKeys count: Int, bitsPerKey: Int) -> Int {
        let blocks = max(1, (count * bitsPerKey + 511) / 512)
        return blocks * 8
    }

    /// A key's bits in any run's filter: the block comes from the digest's low half (and the
    /// filter's size), the 10 bits within it from the high half, the same in every run — so a
    /// lookup works them out once and each run costs one 64-byte load.
    struct FilterKey {
        let low: UInt64
        let mask: SIMD8<UInt64>

        init(low: UInt64, high: UInt64) {
            self.low = low
            var mask = SIMD8<UInt64>(repeating: 0)
            var hash = high
            let step = ((high >> 29) | (high << 35)) &* 0x9E37_79B9_7F4A_7C15 | 1
            for _ in 0..<KeyRun.bitsSet {
                let bit = Int(hash >> 55)
                mask[bit >> 6] |= (1 as UInt64) << UInt64(bit & 63)
                hash &+= step
            }
            self.mask = mask
        }

        /// The first word of the key's block in a filter of `blocks` 512-bit blocks.
        @inline(__always)
        func blockStart(blocks: UInt64) -> Int {
            Int(low.multipliedFullWidth(by: blocks).high) * 8
        }
    }

    func mayContain(_ key: FilterKey) -> Bool { filter.view.mayContain(key) }

    func mayContain(low: UInt64, high: UInt64) -> Bool { mayContain(FilterKey(low: low, high: high)) }

    // MARK: - Reading

    /// Loads a run's footer, index and filter, checking them.
    convenience init(path: String, id: UInt64) throws {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw JournalError("cannot open \(path): \(String(cString: strerror(errno)))") }
        do {
            var status = stat()
            guard fstat(descriptor, &status) == 0 else { throw JournalError("cannot stat \(path): \(String(cString: strerror(errno)))") }
            let size = Int(status.st_size)
            guard size >= Self.footerSize else { throw JournalError("\(path) is \(size) bytes, shorter than a footer") }
            let footer = try Self.readFully(descriptor, offset: size - Self.footerSize, count: Self.footerSize, path: path)
            guard Array(footer[0..<8]) == Self.magic, footer.u32(8) == 1 else { throw JournalError("\(path) is not a run of keys (magic or version)") }
            let level = Int(footer.u32(12))
            let count = footer.u64(16)
            let pages = footer.u64(24)
            let indexOffset = footer.u64(32)
            let words = footer.u64(40)
            let tail = UInt64(size - Self.footerSize)
            guard pages <= tail / 16, words <= tail / 8, indexOffset <= tail, indexOffset + pages * 16 + words * 8 == tail, count <= indexOffset / 34,
                words >= 8, words % 8 == 0, level < 64
            else { throw JournalError("\(path) has an inconsistent footer") }
            let body = try Self.readFully(descriptor, offset: Int(indexOffset), count: Int(tail - indexOffset), path: path)
            var checked = body
            checked.append(contentsOf: footer[0..<64])
            guard CRC32C.checksum(checked) == footer.u32(64) else { throw JournalError("\(path): the index and filter fail their checksum") }
            var firstLows: [UInt64] = []
            var offsets: [UInt64] = []
            firstLows.reserveCapacity(Int(pages))
            offsets.reserveCapacity(Int(pages) + 1)
            for page in 0..<Int(pages) {
                firstLows.append(body.u64(page * 16))
                let offset = body.u64(page * 16 + 8)
                guard offset < indexOffset, offset >= (offsets.last ?? 0), page > 0 || offset == 0 else { throw JournalError("\(path): page \(page) has a bad offset") }
                offsets.append(offset)
            }
            offsets.append(indexOffset)
            var filter = [UInt64](repeating: 0, count: Int(words))
            let filterStart = Int(pages) * 16
            for word in 0..<Int(words) { filter[word] = body.u64(filterStart + word * 8) }
            self.init(
                id: id, level: level, count: Int(count), bytes: Int64(size),
                firstDecided: Instant(microsecondsSinceEpoch: Int64(bitPattern: footer.u64(48))),
                lastDecided: Instant(microsecondsSinceEpoch: Int64(bitPattern: footer.u64(56))),
                path: path, descriptor: descriptor, filter: filter, firstLows: firstLows, offsets: offsets)
        } catch {
            Glibc.close(descriptor)
            throw error
        }
    }

    /// The key, if this run holds it.
    func find(low: UInt64, high: UInt64) throws -> ArchivedKey? {
        guard !firstLows.isEmpty else { return nil }
        // The last page starting at or below `low`, and earlier ones starting at `low` too.
        var lower = 0
        var upper = firstLows.count
        while lower < upper {
            let middle = (lower + upper) / 2
            if firstLows[middle] <= low { lower = middle + 1 } else { upper = middle }
        }
        var page = lower - 1
        guard page >= 0 else { return nil }
        while page >= 0 {
            if let key = try readPage(page, only: (low, high)).first { return key }
            guard firstLows[page] == low else { break }
            page -= 1
        }
        return nil
    }

    /// Every key, in digest order.
    func forEach(_ body: (ArchivedKey) throws -> Void) throws {
        for page in 0..<firstLows.count {
            for key in try readPage(page) { try body(key) }
        }
    }

    var pageCount: Int { firstLows.count }

    /// A page's bytes, checked against its checksum and walked entry by entry.
    func readRawPage(_ page: Int) throws -> [UInt8] {
        let start = Int(offsets[page])
        let length = Int(offsets[page + 1]) - start
        guard length >= 8, length <= Self.pageMax else { throw JournalError("\(path): page \(page) is \(length) bytes") }
        let bytes = try Self.readFully(descriptor, offset: start, count: length, path: path)
        try bytes.withUnsafeBytes { buffer in
            guard Int(buffer.word(0, UInt32.self)) == length - 8,
                CRC32C.checksum(UnsafeRawBufferPointer(rebasing: buffer[8...])) == buffer.word(4, UInt32.self)
            else { throw JournalError("\(path): page \(page) fails its checksum") }
            var position = 8
            while position < length {
                guard position + 34 <= length else { throw JournalError("\(path): page \(page) ends inside an entry") }
                position += 34 + Int(buffer.word(position + 32, UInt16.self))
                guard position <= length else { throw JournalError("\(path): page \(page) holds an entry running past its end") }
            }
        }
        return bytes
    }

    /// The keys of a page; with `only`, just the key with that digest (the others are
    /// skipped, not decoded).
    func readPage(_ page: Int, only wanted: (UInt64, UInt64)? = nil) throws -> [ArchivedKey] {
        let bytes = try readRawPage(page)
        return try bytes.withUnsafeBytes { buffer throws -> [ArchivedKey] in
            var keys: [ArchivedKey] = []
            var position = 8
            while position < buffer.count {
                let answerLength = Int(buffer.word(position + 32, UInt16.self))
                let low = buffer.word(position, UInt64.self)
                let high = buffer.word(position + 8, UInt64.self)
                if wanted.map({ $0.0 == low && $0.1 == high }) ?? true {
                    guard let answer = ArchivedKey.decodeAnswer(Array(buffer[(position + 34)..<(position + 34 + answerLength)])) else {
                        throw JournalError("\(path): page \(page) holds a damaged answer")
                    }
                    keys.append(
                        ArchivedKey(
                            low: low, high: high, fingerprint: buffer.word(position + 16, UInt64.self),
                            decidedAt: Instant(microsecondsSinceEpoch: Int64(bitPattern: buffer.word(position + 24, UInt64.self))), answer: answer))
                    if wanted != nil { break }
                }
                position += 34 + answerLength
            }
            return keys
        }
    }

    static func readFully(_ descriptor: Int32, offset: Int, count: Int, path: String) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let result = bytes.withUnsafeMutableBytes { buffer in
                pread(descriptor, buffer.baseAddress! + done, count - done, off_t(offset + done))
            }
            if result < 0 && errno == EINTR { continue }
            guard result > 0 else { throw JournalError("cannot read \(path) at \(offset + done): \(result < 0 ? String(cString: strerror(errno)) : "end of file")") }
            done += result
        }
        return bytes
    }

    // MARK: - Writing

    /// Writes keys (in any order) as a run: sorted by digest, then a temporary file, fsync,
    /// rename, directory fsync.
    static func write(_ keys: [ArchivedKey], id: UInt64, level: Int, in directory: String, bitsPerKey: Int, files: any JournalFiles) throws -> KeyRun {
        let order = keys.indices.sorted { (keys[$0].low, keys[$0].high) < (keys[$1].low, keys[$1].high) }
        let builder = try Builder(id: id, level: level, capacity: keys.count, directory: directory, bitsPerKey: bitsPerKey, files: files)
        do {
            for index in order { try builder.add(keys[index]) }
            guard let run = try builder.finish() else { throw JournalError("a run of no keys is not written") }
            return run
        } catch {
            builder.abandon()
            throw error
        }
    }

    /// Merges runs into one, dropping keys decided at or before `forgetThrough` and
    /// duplicates; nil if nothing is left. Entries are copied as they are, not decoded.
    static func merge(_ runs: [KeyRun], id: UInt64, level: Int, forgetThrough: Instant, in directory: String, bitsPerKey: Int, files: any JournalFiles) throws -> KeyRun? {
        let builder = try Builder(id: id, level: level, capacity: runs.reduce(0) { $0 + $1.count }, directory: directory, bitsPerKey: bitsPerKey, files: files)
        do {
            var cursors = try runs.map { try Cursor(run: $0) }
            var last: (UInt64, UInt64)?
            let forget = forgetThrough.microsecondsSinceEpoch
            while true {
                var best = -1
                for index in cursors.indices where !cursors[index].done {
                    if best < 0 || (cursors[index].low, cursors[index].high) < (cursors[best].low, cursors[best].high) { best = index }
                }
                guard best >= 0 else { break }
                let (low, high) = (cursors[best].low, cursors[best].high)
                if last.map({ $0 != (low, high) }) ?? true, cursors[best].decided > forget {
                    try cursors[best].withEntry { entry in try builder.addEncoded(low: low, high: high, decided: cursors[best].decided, entry: entry) }
                }
                last = (low, high)
                try cursors[best].advance()
            }
            return try builder.finish()
        } catch {
            builder.abandon()
            throw error
        }
    }

    /// Walks a run's entries in order, a page at a time, without decoding them.
    private struct Cursor {
        let run: KeyRun
        var page = -1
        var bytes: [UInt8] = []
        var position = 0
        var done = false
        var low: UInt64 = 0
        var high: UInt64 = 0
        var decided: Int64 = 0

        init(run: KeyRun) throws {
            self.run = run
            try nextPage()
        }

        private var entryLength: Int { 34 + Int(bytes.withUnsafeBytes { $0.word(position + 32, UInt16.self) }) }

        func withEntry(_ body: (UnsafeRawBufferPointer) throws -> Void) throws {
            let length = entryLength
            try bytes.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[position..<(position + length)])) }
        }

        mutating func advance() throws {
            position += entryLength
            if position >= bytes.count { try nextPage() } else { readHead() }
        }

        private mutating func nextPage() throws {
            repeat {
                page += 1
                guard page < run.pageCount else {
                    done = true
                    return
                }
                bytes = try run.readRawPage(page)
                position = 8
            } while position >= bytes.count
            readHead()
        }

        private mutating func readHead() {
            bytes.withUnsafeBytes { buffer in
                low = buffer.word(position, UInt64.self)
                high = buffer.word(position + 8, UInt64.self)
                decided = Int64(bitPattern: buffer.word(position + 24, UInt64.self))
            }
        }
    }

    /// Streams sorted keys into a new run file.
    final class Builder {
        let id: UInt64
        let level: Int
        let path: String
        let files: any JournalFiles
        let directory: String
        private var descriptor: Int32
        private var filter: [UInt64]
        private var firstLows: [UInt64] = []
        private var offsets: [UInt64] = []
        private var page: [UInt8] = []
        private var written: UInt64 = 0
        /// Where the last fdatasync of this file left off.
        private var synced: UInt64 = 0
        private var count = 0
        private var firstDecided = Instant(microsecondsSinceEpoch: .max)
        private var lastDecided = Instant(microsecondsSinceEpoch: .min)

        init(id: UInt64, level: Int, capacity: Int, directory: String, bitsPerKey: Int, files: any JournalFiles) throws {
            self.id = id
            self.level = level
            self.directory = directory
            self.path = directory + "/" + String(format: "keys-%016llx.tgk", id)
            self.files = files
            self.filter = [UInt64](repeating: 0, count: KeyRun.filterWords(forKeys: capacity, bitsPerKey: bitsPerKey))
            descriptor = files.create(path + ".tmp")
            guard descriptor >= 0 else { throw JournalError("cannot create \(path).tmp: \(String(cString: strerror(errno)))") }
            page.reserveCapacity(KeyRun.pageTarget + 512)
        }

        private var entry: [UInt8] = []

        func add(_ key: ArchivedKey) throws {
            let answer = key.encodedAnswer
            guard answer.count <= Int(UInt16.max) else { throw JournalError("an answer of \(answer.count) bytes is too long to keep on disk") }
            entry.removeAll(keepingCapacity: true)
            entry.appendLittleEndian(key.low)
            entry.appendLittleEndian(key.high)
            entry.appendLittleEndian(key.fingerprint)
            entry.appendLittleEndian(UInt64(bitPattern: key.decidedAt.microsecondsSinceEpoch))
            entry.appendLittleEndian(UInt16(answer.count))
            entry.append(contentsOf: answer)
            try entry.withUnsafeBytes { try addEncoded(low: key.low, high: key.high, decided: key.decidedAt.microsecondsSinceEpoch, entry: $0) }
        }

        /// Appends an entry already in its on-disk form (34 bytes and the answer).
        func addEncoded(low: UInt64, high: UInt64, decided: Int64, entry: UnsafeRawBufferPointer) throws {
            if page.count + entry.count > KeyRun.pageTarget, !page.isEmpty { try flushPage() }
            if page.isEmpty {
                page.append(contentsOf: [UInt8](repeating: 0, count: 8))
                firstLows.append(low)
            }
            page.append(contentsOf: entry)
            let filterKey = FilterKey(low: low, high: high)
            let start = filterKey.blockStart(blocks: UInt64(filter.count / 8))
            for index in 0..<8 { filter[start + index] |= filterKey.mask[index] }
            count += 1
            let instant = Instant(microsecondsSinceEpoch: decided)
            firstDecided = min(firstDecided, instant)
            lastDecided = max(lastDecided, instant)
        }

        private func flushPage() throws {
            let entries = page.count - 8
            page.setLittleEndian(UInt32(entries), at: 0)
            page.setLittleEndian(page.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[8...])) }, at: 4)
            offsets.append(written)
            try put(page)
            page.removeAll(keepingCapacity: true)
        }

        private func put(_ bytes: [UInt8]) throws {
            let result = bytes.withUnsafeBytes { files.write(descriptor, $0) }
            guard result == bytes.count else { throw JournalError("cannot write \(path).tmp: \(String(cString: strerror(errno)))") }
            written += UInt64(bytes.count)
            // Never more than a little unsynced: the journal's fdatasync on the same file system
            // can wait for every dirty page of the file system's running transaction, so a run
            // of tens of MiB synced only at the end held `sync` answers for tens of ms
            // (bench/README.md, "Keys on disk and the journal's fsync").
            if written - synced >= Self.syncEvery {
                guard files.sync(descriptor) == 0 else { throw JournalError("cannot sync \(path).tmp: \(String(cString: strerror(errno)))") }
                synced = written
            }
        }

        static let syncEvery: UInt64 = 1 << 20

        /// Writes the index, filter and footer, syncs and renames; nil if no key was added.
        func finish() throws -> KeyRun? {
            guard count > 0 else {
                abandon()
                return nil
            }
            if !page.isEmpty { try flushPage() }
            let indexOffset = written
            var tail: [UInt8] = []
            tail.reserveCapacity(firstLows.count * 16 + filter.count * 8 + KeyRun.footerSize)
            for (low, offset) in zip(firstLows, offsets) {
                tail.appendLittleEndian(low)
                tail.appendLittleEndian(offset)
            }
            for word in filter { tail.appendLittleEndian(word) }
            let checkedStart = tail.count - firstLows.count * 16 - filter.count * 8
            tail.append(contentsOf: KeyRun.magic)
            tail.appendLittleEndian(UInt32(1))
            tail.appendLittleEndian(UInt32(level))
            tail.appendLittleEndian(UInt64(count))
            tail.appendLittleEndian(UInt64(firstLows.count))
            tail.appendLittleEndian(indexOffset)
            tail.appendLittleEndian(UInt64(filter.count))
            tail.appendLittleEndian(UInt64(bitPattern: firstDecided.microsecondsSinceEpoch))
            tail.appendLittleEndian(UInt64(bitPattern: lastDecided.microsecondsSinceEpoch))
            tail.appendLittleEndian(CRC32C.checksum(Array(tail[checkedStart...])))
            tail.appendLittleEndian(UInt32(0))
            try put(tail)
            guard files.sync(descriptor) == 0 else { throw JournalError("cannot sync \(path).tmp: \(String(cString: strerror(errno)))") }
            files.close(descriptor)
            descriptor = -1
            guard rename(path + ".tmp", path) == 0 else { throw JournalError("cannot rename \(path).tmp: \(String(cString: strerror(errno)))") }
            try syncDirectory(directory)
            let reader = open(path, O_RDONLY | O_CLOEXEC)
            guard reader >= 0 else { throw JournalError("cannot open \(path): \(String(cString: strerror(errno)))") }
            offsets.append(indexOffset)
            return KeyRun(
                id: id, level: level, count: count, bytes: Int64(written), firstDecided: firstDecided, lastDecided: lastDecided, path: path,
                descriptor: reader, filter: filter, firstLows: firstLows, offsets: offsets)
        }

        func abandon() {
            if descriptor >= 0 { files.close(descriptor) }
            descriptor = -1
            unlink(path + ".tmp")
        }
    }
}

/// A file created or renamed in `directory` is only there after a crash once the directory is
/// synced: segments, checkpoints and runs of keys all end with this.
public func syncDirectory(_ directory: String) throws {
    let descriptor = open(directory, O_RDONLY)
    guard descriptor >= 0 else { throw JournalError("cannot open \(directory): \(String(cString: strerror(errno)))") }
    defer { Glibc.close(descriptor) }
    guard fsync(descriptor) == 0 else { throw JournalError("cannot sync \(directory): \(String(cString: strerror(errno)))") }
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    func word<Value: FixedWidthInteger>(_ offset: Int, _ type: Value.Type) -> Value {
        Value(littleEndian: loadUnaligned(fromByteOffset: offset, as: Value.self))
    }
}

extension [UInt8] {
    mutating func appendLittleEndian<Value: FixedWidthInteger>(_ value: Value) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    mutating func setLittleEndian<Value: FixedWidthInteger>(_ value: Value, at offset: Int) {
        Swift.withUnsafeBytes(of: value.littleEndian) { bytes in
            for index in 0..<bytes.count { self[offset + index] = bytes[index] }
        }
    }

    func littleEndian<Value: FixedWidthInteger>(_ offset: Int, as: Value.Type) -> Value {
        var value = Value.zero
        for index in (0..<MemoryLayout<Value>.size).reversed() { value = value << 8 | Value(self[offset + index]) }
        return value
    }

    func u16(_ offset: Int) -> UInt16 { littleEndian(offset, as: UInt16.self) }
    func u32(_ offset: Int) -> UInt32 { littleEndian(offset, as: UInt32.self) }
    func u64(_ offset: Int) -> UInt64 { littleEndian(offset, as: UInt64.self) }
}
