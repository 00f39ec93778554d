#if canImport(Glibc)
import Glibc
#endif

/// Names the calling thread for the operating system (`top -H`, `ps -L`, perf), as Foundation's
/// `Thread.name` does not on Linux: by writing /proc/thread-self/comm (what
/// pthread_setname_np does; Glibc hides it from Swift without _GNU_SOURCE). Linux keeps 15
/// bytes; longer names are cut. Best effort: a failure leaves the inherited name.
public func nameCurrentThread(_ name: String) {
    #if os(Linux)
    let bytes = Array(name.utf8.prefix(15))
    guard !bytes.isEmpty else { return }
    let descriptor = open("/proc/thread-self/comm", O_WRONLY)
    guard descriptor >= 0 else { return }
    defer { close(descriptor) }
    _ = bytes.withUnsafeBytes { write(descriptor, $0.baseAddress!, $0.count) }
    #endif
}
