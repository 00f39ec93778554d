import NIOSSL

/// How the client speaks TLS to the gate port.
public struct TLSOptions: Sendable, Hashable {
    /// PEM bundle of the CAs the server's certificate must chain to; nil trusts the system's roots.
    public var caFile: String?
    /// For mTLS: the client's PEM certificate (chain) and its private key.
    public var certificateFile: String?
    public var keyFile: String?
    /// The name the server's certificate must carry; nil uses the host connected to.
    public var serverName: String?
    /// Off only for tests against a certificate without the right name: the chain is still checked.
    public var verifyHostname: Bool
    /// The lowest TLS version offered (1.2 or 1.3).
    public var minimumVersion12: Bool

    public init(
        caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil, serverName: String? = nil, verifyHostname: Bool = true,
        allowTLS12: Bool = true
    ) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.serverName = serverName
        self.verifyHostname = verifyHostname
        self.minimumVersion12 = allowTLS12
    }

    func makeContext() throws(TollgateError) -> NIOSSLContext {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = minimumVersion12 ? .tlsv12 : .tlsv13
        configuration.certificateVerification = verifyHostname ? .fullVerification : .noHostnameVerification
        do {
            if let caFile {
                let roots = try NIOSSLCertificate.fromPEMFile(caFile)
                guard !roots.isEmpty else { throw TollgateError.tls("the CA file \(caFile) holds no certificate") }
                configuration.trustRoots = .certificates(roots)
            }
            switch (certificateFile, keyFile) {
            case (let certificate?, let key?):
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            case (nil, nil):
                break
            default:
                throw TollgateError.tls("a client certificate needs both the certificate file and the key file")
            }
            return try NIOSSLContext(configuration: configuration)
        } catch let error as TollgateError {
            throw error
        } catch {
            throw .tls("cannot load the TLS files: \(error)")
        }
    }
}
