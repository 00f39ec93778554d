import NIOCore
import NIOSSL
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// TLS on the gate port: the server's certificate and key, and for mTLS the CA bundle client
/// certificates must chain to.
public struct TLSSettings: Sendable, Equatable {
    public enum ClientCertificates: String, Sendable, Equatable {
        /// No client certificate is asked for.
        case none
        /// A client may present one; if it does, it must chain to the client CA.
        case optional
        /// A client without a certificate that chains to the client CA is refused in the handshake.
        case required
    }

    public enum MinimumVersion: String, Sendable, Equatable {
        case tls12 = "1.2"
        case tls13 = "1.3"
    }

    public var certificateFile: String
    public var keyFile: String
    public var clientCAFile: String?
    public var clientCertificates: ClientCertificates
    public var minimumVersion: MinimumVersion

    public init(
        certificateFile: String, keyFile: String, clientCAFile: String? = nil, clientCertificates: ClientCertificates? = nil,
        minimumVersion: MinimumVersion = .tls13
    ) {
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.clientCAFile = clientCAFile
        self.clientCertificates = clientCertificates ?? (clientCAFile == nil ? .none : .required)
        self.minimumVersion = minimumVersion
    }
}

/// The TLS context new connections use, rebuilt when the files change. A connection keeps the
/// context it was accepted with, so rotation never disturbs one already open.
final class TLSContextSource: Sendable {
    struct Loaded: Sendable {
        var context: NIOSSLContext
        /// The files' bytes the context was built from: a reload with the same bytes is a no-op.
        var files: [[UInt8]]
        /// The server certificate's notAfter, in seconds since 1970.
        var notValidAfter: Int64
    }

    let settings: TLSSettings
    private let loaded: Mutex<Loaded>

    init(settings: TLSSettings) throws(ServerError) {
        self.settings = settings
        let files = try TLSContextSource.read(settings)
        loaded = Mutex(try TLSContextSource.build(settings, files: files))
    }

    var context: NIOSSLContext { loaded.withLock { $0.context } }
    var notValidAfter: Int64 { loaded.withLock { $0.notValidAfter } }

    /// Reads the files again and, if they changed, builds and installs a new context. Throws
    /// (keeping the current context) if the new files cannot be read or do not make a context:
    /// a half-written rotation must not take the port down.
    func reload() throws(ServerError) -> Bool {
        let files = try TLSContextSource.read(settings)
        if loaded.withLock({ $0.files == files }) { return false }
        let fresh = try TLSContextSource.build(settings, files: files)
        loaded.withLock { $0 = fresh }
        return true
    }

    private static func read(_ settings: TLSSettings) throws(ServerError) -> [[UInt8]] {
        var files = [try readFile(settings.certificateFile, what: "TLS certificate"), try readFile(settings.keyFile, what: "TLS key")]
        if let ca = settings.clientCAFile { files.append(try readFile(ca, what: "client CA bundle")) }
        return files
    }

    private static func build(_ settings: TLSSettings, files: [[UInt8]]) throws(ServerError) -> Loaded {
        let chain: [NIOSSLCertificate]
        do {
            chain = try NIOSSLCertificate.fromPEMBytes(files[0])
        } catch {
            throw ServerError("cannot read the TLS certificate \(settings.certificateFile): \(error)")
        }
        guard let leaf = chain.first else { throw ServerError("the TLS certificate file \(settings.certificateFile) holds no certificate") }
        let key: NIOSSLPrivateKey
        do {
            key = try NIOSSLPrivateKey(bytes: files[1], format: .pem)
        } catch {
            throw ServerError("cannot read the TLS key \(settings.keyFile): \(error)")
        }
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = settings.minimumVersion == .tls13 ? .tlsv13 : .tlsv12
        if let caFile = settings.clientCAFile {
            let roots: [NIOSSLCertificate]
            do {
                roots = try NIOSSLCertificate.fromPEMBytes(files[2])
            } catch {
                throw ServerError("cannot read the client CA bundle \(caFile): \(error)")
            }
            guard !roots.isEmpty else { throw ServerError("the client CA bundle \(caFile) holds no certificate") }
            configuration.trustRoots = .certificates(roots)
            configuration.sendCANameList = true
        }
        switch settings.clientCertificates {
        case .none: configuration.certificateVerification = .none
        case .optional: configuration.certificateVerification = .optionalVerification
        case .required: configuration.certificateVerification = .noHostnameVerification
        }
        do {
            let context = try NIOSSLContext(configuration: configuration)
            return Loaded(context: context, files: files, notValidAfter: Int64(leaf.notValidAfter))
        } catch {
            throw ServerError("cannot use the TLS certificate \(settings.certificateFile) with the key \(settings.keyFile): \(error)")
        }
    }
}

/// A whole file's bytes, for files of at most 1 MiB (certificates, keys, credentials).
func readFile(_ path: String, what: String, limit: Int = 1 << 20) throws(ServerError) -> [UInt8] {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw ServerError("cannot read the \(what) \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 16_384)
    while true {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
        if count < 0 {
            if errno == EINTR { continue }
            throw ServerError("cannot read the \(what) \(path): \(String(cString: strerror(errno)))")
        }
        if count == 0 { break }
        bytes.append(contentsOf: chunk[0..<count])
        guard bytes.count <= limit else { throw ServerError("the \(what) \(path) is larger than \(limit) bytes") }
    }
    return bytes
}
