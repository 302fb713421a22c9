/// A valid referral code: 8 Crockford base32 data symbols and Crockford's mod-37 check symbol,
/// kept in the canonical form `XXXX-XXXX-C` that referrald publishes and puts in share URLs.
///
/// The only ways to get one are `parse` (which verifies the check symbol) and
/// `init(randomBits:)` (which computes it), so a `ReferralCode` value is always valid.
public struct ReferralCode: Hashable, Sendable, CustomStringConvertible {
    /// `XXXX-XXXX-C`, upper case.
    public let canonical: String

    /// The 32 data symbols, values 0-31 (no I, L, O, U).
    static let data = Array("0123456789ABCDEFGHJKMNPQRSTVWXYZ".utf8)
    /// The 37 check symbols, values 0-36: the data symbols, then `*~$=U`.
    static let check = data + Array("*~$=U".utf8)

    /// Reads an entered code (examples/README.md, "Reading an entered code"): drops ASCII
    /// whitespace and `-`, upper-cases, reads `O` as `0` and `I`, `L` as `1`, then needs exactly
    /// 8 data symbols and their check symbol. Anything else is nil: an unknown code, which makes
    /// the lead unattributed (it is not an invalid event). Non-ASCII letters are never folded
    /// into symbols, so a look-alike such as the Kelvin sign cannot pass for `K`.
    public static func parse(_ input: String) -> ReferralCode? {
        var symbols: [UInt8] = []
        for b in input.utf8 {
            switch b {
            case 0x09...0x0D, 0x20, UInt8(ascii: "-"): continue
            case UInt8(ascii: "O"), UInt8(ascii: "o"): symbols.append(UInt8(ascii: "0"))
            case UInt8(ascii: "I"), UInt8(ascii: "i"), UInt8(ascii: "L"), UInt8(ascii: "l"):
                symbols.append(UInt8(ascii: "1"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): symbols.append(b - 32)
            default: symbols.append(b)
            }
            // Stop early on hostile input: ten symbols are already one too many.
            if symbols.count > 9 { return nil }
        }
        guard symbols.count == 9 else { return nil }
        var body: UInt64 = 0
        for s in symbols.prefix(8) {
            guard let v = data.firstIndex(of: s) else { return nil }  // `U` is a check symbol only
            body = body << 5 | UInt64(v)
        }
        guard symbols[8] == check[checkValue(body)] else { return nil }
        return ReferralCode(body: body)
    }

    /// A code from the low 40 bits of `randomBits` (8 symbols of 5 bits, most significant
    /// first) with its check symbol. The issuer supplies the randomness: the core has none.
    public init(randomBits: UInt64) {
        self.init(body: randomBits & (1 << 40 - 1))
    }

    private init(body: UInt64) {
        var text: [UInt8] = []
        for k in (0..<8).reversed() {
            text.append(Self.data[Int(body >> (5 * UInt64(k)) & 31)])
            if k == 4 { text.append(UInt8(ascii: "-")) }
        }
        text.append(UInt8(ascii: "-"))
        text.append(Self.check[Self.checkValue(body)])
        canonical = String(decoding: text, as: UTF8.self)
    }

    /// Crockford's check: the 40-bit body modulo 37 (it fits a UInt64, so no stepwise reduction).
    private static func checkValue(_ body: UInt64) -> Int { Int(body % 37) }

    /// Whether the check symbol is one of the 32 data symbols, i.e. not `*`, `~`, `$`, `=` or
    /// `U`. An issuer may re-draw codes for which this is false, to hand out only codes that
    /// survive being typed, spoken or put in a URL unescaped; every reader still accepts all 37.
    public var isAlphanumeric: Bool {
        // Never nil: the canonical form always ends with a check symbol.
        Self.check.firstIndex(of: canonical.utf8.last!)! < 32
    }

    public var description: String { canonical }
}
