import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Work that must not run on the Swift concurrency pool.
///
/// Swift Testing runs every test as a task on that pool, which has one thread per core: two
/// on a two-core machine. A test that blocks one of them — a socket read, a child process, a
/// sleep, a long loop — leaves the others (and every in-process server and client, whose
/// continuations need a pool thread to resume) one thread, or none. A client that has
/// connected but cannot resume to send its HELLO is closed by the server's handshake timeout;
/// that is how a blocked pool shows up in the test log.
///
/// So tests hand such work to a thread of its own and suspend until it is done. Assertions
/// stay on the test's task (Swift Testing attributes an issue to a test through task-local
/// state, which a plain thread does not have): the work returns what it found, and the test
/// checks it.
public enum OffPool {
    /// Runs `body` — something that blocks: a socket, a child process, a wait — on a new
    /// thread, and returns what it returns or throws what it throws.
    public static func blocking<T: Sendable>(_ name: String = "test-blocking", _ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            startThread(name) {
                do {
                    continuation.resume(returning: try body())
                } catch {
                    continuation.resume(throwing: error)
                }
            }
        }
    }

    /// `blocking` for work that cannot throw.
    public static func blocking<T: Sendable>(_ name: String = "test-blocking", _ body: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { (continuation: CheckedContinuation<T, Never>) in
            startThread(name) { continuation.resume(returning: body()) }
        }
    }

    /// Runs CPU-heavy `body` (a property run, a fuzz loop) on a thread of its own, one such
    /// body at a time in the whole test process: however many heavy tests are started at
    /// once, they queue here without holding a pool thread, and they take at most one core,
    /// leaving the rest for the servers and clients of the tests running beside them.
    public static func cpu<T: Sendable>(_ name: String = "test-cpu", _ body: @escaping @Sendable () throws -> T) async throws -> T {
        await heavy.enter()
        defer { heavy.leave() }
        return try await blocking(name, body)
    }

    /// `cpu` for work that cannot throw.
    public static func cpu<T: Sendable>(_ name: String = "test-cpu", _ body: @escaping @Sendable () -> T) async -> T {
        await heavy.enter()
        defer { heavy.leave() }
        return await blocking(name, body)
    }

    /// Sleeps on a thread of its own: for timing something against a real clock (a stop and
    /// resume of a child process) where a sleeping task could wake late, waiting for a free
    /// pool thread.
    public static func sleep(microseconds: UInt32) async {
        await blocking("test-sleep") { usleep(microseconds) }
    }

    private static let heavy = AsyncGate()

    private final class Start: @unchecked Sendable {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// A detached pthread running `body`. Threads here are few and short-lived (one per
    /// blocking step of a test); failing to start one is a broken machine, and says so.
    private static func startThread(_ name: String, _ body: @escaping @Sendable () -> Void) {
        let start = Unmanaged.passRetained(Start(body)).toOpaque()
        #if canImport(Glibc)
        var thread = pthread_t()
        #else
        var thread: pthread_t?
        #endif
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        defer { pthread_attr_destroy(&attributes) }
        let result = pthread_create(
            &thread, &attributes,
            { context in
                let start = Unmanaged<Start>.fromOpaque(context!).takeRetainedValue()
                start.body()
                return nil
            }, start)
        precondition(result == 0, "cannot start a test thread (\(name)): pthread_create returned \(result)")
    }
}

/// A gate one task passes at a time; the others wait suspended, in arrival order.
final class AsyncGate: Sendable {
    private struct State {
        var busy = false
        var waiting: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    func enter() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let admitted = state.withLock { state in
                if state.busy {
                    state.waiting.append(continuation)
                    return false
                }
                state.busy = true
                return true
            }
            if admitted { continuation.resume() }
        }
    }

    func leave() {
        let next: CheckedContinuation<Void, Never>? = state.withLock { state in
            if state.waiting.isEmpty {
                state.busy = false
                return nil
            }
            return state.waiting.removeFirst()
        }
        next?.resume()
    }
}

/// What work handed to `OffPool` throws where a test would `#require` something: the test,
/// back on its task, sees it as a thrown error (which fails it, with this message).
public struct Unexpected: Error, CustomStringConvertible {
    public var description: String

    public init(_ description: String) {
        self.description = description
    }
}

extension Optional {
    /// The value, or `Unexpected(what)` thrown: `#require` for work off the pool.
    public func required(_ what: @autoclosure () -> String) throws -> Wrapped {
        guard let value = self else { throw Unexpected("expected \(what())") }
        return value
    }
}
