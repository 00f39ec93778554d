/// The names a client certificate identifies its holder by: the subject's common name and the
/// URI subject alternative names (a SPIFFE id such as `spiffe://mesh.example/ns/agents/sa/runtime`
/// is one). Read from the certificate's DER bytes with a small, bounds-checked DER walker; a
/// certificate it cannot read yields no names, so it matches no identity.
public struct CertificateNames: Hashable, Sendable, CustomStringConvertible {
    public var commonName: String?
    public var uris: [String]

    public init(commonName: String?, uris: [String]) {
        self.commonName = commonName
        self.uris = uris
    }

    /// The names in the order identities are looked up: URI SANs first, then the CN.
    public var candidates: [String] {
        uris + (commonName.map { [$0] } ?? [])
    }

    public var description: String {
        var parts = uris.map { "URI:\($0)" }
        if let commonName { parts.append("CN=\(commonName)") }
        return parts.isEmpty ? "no names" : parts.joined(separator: ", ")
    }

    /// Parses an X.509 certificate in DER. Returns nil if the bytes are not a certificate.
    public static func parse(der: [UInt8]) -> CertificateNames? {
        var reader = DERReader(der[...])
        guard let certificate = reader.read(tag: 0x30) else { return nil }
        var certificateReader = DERReader(certificate)
        guard let tbs = certificateReader.read(tag: 0x30) else { return nil }
        var fields = DERReader(tbs)
        // [0] EXPLICIT version, optional.
        if fields.peekTag == 0xA0 { _ = fields.read(tag: 0xA0) }
        guard fields.read(tag: 0x02) != nil,  // serialNumber
            fields.read(tag: 0x30) != nil,  // signature algorithm
            fields.read(tag: 0x30) != nil,  // issuer
            fields.read(tag: 0x30) != nil,  // validity
            let subject = fields.read(tag: 0x30),
            fields.read(tag: 0x30) != nil  // subjectPublicKeyInfo
        else { return nil }

        var names = CertificateNames(commonName: commonName(in: subject), uris: [])
        while let (tag, content) = fields.readAny() {
            // [1] issuerUniqueID, [2] subjectUniqueID, [3] EXPLICIT extensions.
            guard tag == 0xA3 else { continue }
            var wrapper = DERReader(content)
            guard let extensions = wrapper.read(tag: 0x30) else { return nil }
            var list = DERReader(extensions)
            while let ext = list.read(tag: 0x30) {
                var parts = DERReader(ext)
                guard let oid = parts.read(tag: 0x06) else { return nil }
                if parts.peekTag == 0x01 { _ = parts.read(tag: 0x01) }  // critical
                guard let value = parts.read(tag: 0x04) else { return nil }
                if Array(oid) == subjectAltNameOID {
                    names.uris = uris(in: value)
                }
            }
        }
        return names
    }

    /// id-ce-subjectAltName, 2.5.29.17.
    private static let subjectAltNameOID: [UInt8] = [0x55, 0x1D, 0x11]
    /// id-at-commonName, 2.5.4.3.
    private static let commonNameOID: [UInt8] = [0x55, 0x04, 0x03]

    /// The last common name in the subject (the most specific one), if any.
    private static func commonName(in subject: ArraySlice<UInt8>) -> String? {
        var found: String?
        var sets = DERReader(subject)
        while let set = sets.read(tag: 0x31) {
            var attributes = DERReader(set)
            while let attribute = attributes.read(tag: 0x30) {
                var parts = DERReader(attribute)
                guard let oid = parts.read(tag: 0x06), Array(oid) == commonNameOID, let (tag, value) = parts.readAny() else { continue }
                switch tag {
                case 0x0C, 0x13, 0x16, 0x14:  // UTF8String, PrintableString, IA5String, TeletexString
                    found = String(decoding: value, as: UTF8.self)
                case 0x1E:  // BMPString: UTF-16BE
                    guard value.count % 2 == 0 else { continue }
                    let units = stride(from: value.startIndex, to: value.endIndex, by: 2).map { UInt16(value[$0]) << 8 | UInt16(value[$0 + 1]) }
                    found = String(decoding: units, as: UTF16.self)
                default:
                    continue
                }
            }
        }
        return found
    }

    /// The uniformResourceIdentifier entries ([6] IA5String) of a GeneralNames sequence.
    private static func uris(in extensionValue: ArraySlice<UInt8>) -> [String] {
        var outer = DERReader(extensionValue)
        guard let generalNames = outer.read(tag: 0x30) else { return [] }
        var names = DERReader(generalNames)
        var found: [String] = []
        while let (tag, value) = names.readAny() {
            if tag == 0x86 { found.append(String(decoding: value, as: UTF8.self)) }
        }
        return found
    }
}

/// Reads DER tag-length-value items from a byte slice. Every read is bounds-checked; a
/// malformed item ends the reading (returns nil) instead of trapping.
struct DERReader {
    private var bytes: ArraySlice<UInt8>

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
    }

    var peekTag: UInt8? { bytes.first }

    /// The content of the next item if its tag is `tag`; nothing is consumed otherwise.
    mutating func read(tag: UInt8) -> ArraySlice<UInt8>? {
        guard peekTag == tag, let (_, content) = readAny() else { return nil }
        return content
    }

    /// The next item's tag and content. Only single-byte tags, as in certificates.
    mutating func readAny() -> (UInt8, ArraySlice<UInt8>)? {
        var index = bytes.startIndex
        guard index < bytes.endIndex else { return nil }
        let tag = bytes[index]
        guard tag & 0x1F != 0x1F else { return nil }
        index += 1
        guard index < bytes.endIndex else { return nil }
        let first = bytes[index]
        index += 1
        var length = 0
        if first & 0x80 == 0 {
            length = Int(first)
        } else {
            let count = Int(first & 0x7F)
            guard count >= 1, count <= 4, bytes.endIndex - index >= count else { return nil }
            for _ in 0..<count {
                length = length << 8 | Int(bytes[index])
                index += 1
            }
        }
        guard bytes.endIndex - index >= length else { return nil }
        let content = bytes[index..<index + length]
        bytes = bytes[(index + length)...]
        return (tag, content)
    }
}
