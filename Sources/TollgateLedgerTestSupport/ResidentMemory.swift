import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Resident set size in bytes, from /proc/self/statm (its second field, in pages), for the
/// benchmarks' memory figures. `trimmingFreedMemory` first hands memory malloc has freed back
/// to the system (glibc's malloc_trim, which the Glibc module does not export), so the figure
/// counts what is in use.
public func residentBytes(trimmingFreedMemory: Bool = false) -> Int {
    if trimmingFreedMemory {
        typealias Trim = @convention(c) (Int) -> Int32
        if let symbol = dlsym(nil, "malloc_trim") { _ = unsafeBitCast(symbol, to: Trim.self)(0) }
    }
    guard let file = fopen("/proc/self/statm", "r") else { return 0 }
    defer { fclose(file) }
    var buffer = [UInt8](repeating: 0, count: 128)
    let read = fread(&buffer, 1, buffer.count - 1, file)
    let fields = String(decoding: buffer[0..<read], as: UTF8.self).split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}
