import Foundation

/// Certificates made at test time with the `openssl` tool, in a temporary directory: two CAs,
/// server certificates for 127.0.0.1 and localhost, and client certificates (good, from the
/// wrong CA, expired). Nothing here is committed; every run makes fresh keys.
struct TestPKI {
    let directory: String

    var caCertificate: String { directory + "/ca.pem" }
    var wrongCACertificate: String { directory + "/wrong-ca.pem" }

    /// A certificate and key pair on disk.
    struct Pair {
        let certificate: String
        let key: String
    }

    static func make() async throws -> TestPKI {
        let directory = NSTemporaryDirectory() + "tollgate-pki-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let pki = TestPKI(directory: directory)
        try await pki.makeCA("ca", subject: "Tollgate Test CA")
        try await pki.makeCA("wrong-ca", subject: "Somebody Else's CA")
        return pki
    }

    func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func makeCA(_ name: String, subject: String) async throws {
        try await openssl([
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "\(directory)/\(name).key",
            "-out", "\(directory)/\(name).pem", "-days", "2", "-subj", "/CN=\(subject)",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        ])
    }

    /// A leaf certificate signed by `ca` ("ca" or "wrong-ca"). `days` below zero makes one
    /// that expired before it was made.
    @discardableResult
    func issue(_ name: String, commonName: String, subjectAltNames: [String] = [], ca: String = "ca", days: Int = 1, server: Bool = false) async throws -> Pair {
        let key = "\(directory)/\(name).key"
        let csr = "\(directory)/\(name).csr"
        let certificate = "\(directory)/\(name).pem"
        let extensions = "\(directory)/\(name).ext"
        try await openssl([
            "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=\(commonName)",
        ])
        var lines = ["basicConstraints=CA:FALSE", "extendedKeyUsage=\(server ? "serverAuth" : "clientAuth")"]
        if !subjectAltNames.isEmpty { lines.append("subjectAltName=" + subjectAltNames.joined(separator: ",")) }
        try lines.joined(separator: "\n").write(toFile: extensions, atomically: true, encoding: .utf8)
        try await openssl([
            "x509", "-req", "-in", csr, "-CA", "\(directory)/\(ca).pem", "-CAkey", "\(directory)/\(ca).key", "-CAcreateserial", "-out", certificate,
            "-days", String(days), "-extfile", extensions,
        ])
        return Pair(certificate: certificate, key: key)
    }

    /// The server certificate for 127.0.0.1 and localhost.
    func issueServer(_ name: String = "server", commonName: String = "tollgated", ca: String = "ca", days: Int = 1) async throws -> Pair {
        try await issue(name, commonName: commonName, subjectAltNames: ["DNS:localhost", "IP:127.0.0.1"], ca: ca, days: days, server: true)
    }

    /// The DER bytes of a PEM certificate.
    func der(_ pem: String) async throws -> [UInt8] {
        let out = "\(pem).der"
        try await openssl(["x509", "-in", pem, "-outform", "DER", "-out", out])
        return Array(try Data(contentsOf: URL(fileURLWithPath: out)))
    }

    @discardableResult
    func openssl(_ arguments: [String], input: String? = nil) async throws -> String {
        try await TestPKI.run("/usr/bin/openssl", arguments, input: input)
    }

    /// Runs a program to completion (on a thread of its own); throws with its output if it fails.
    @discardableResult
    static func run(_ program: String, _ arguments: [String], input: String? = nil, environment: [String: String]? = nil) async throws -> String {
        let result = try await ChildProcess.run(program, arguments, input: input, environment: environment)
        guard result.status == 0 else {
            throw TestPKIError(description: "\(program) \(arguments.joined(separator: " ")) exited \(result.status): \(result.output)")
        }
        return result.output
    }
}

struct TestPKIError: Error, CustomStringConvertible {
    var description: String
}
