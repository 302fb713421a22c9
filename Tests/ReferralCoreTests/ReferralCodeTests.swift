import Foundation
import ReferralTestKit
import Testing

@testable import ReferralCore

@Suite struct ReferralCodeTests {
    /// Every test vector of the contract's examples/README.md.
    @Test(
        arguments: [
            ("K7QM-42XD-E", "K7QM-42XD-E"), ("9XR4-T1NB-3", "9XR4-T1NB-3"), ("H0RN-7B1Z-$", "H0RN-7B1Z-$"),
            ("T3KV-9ME6-U", "T3KV-9ME6-U"), ("k7qm 42xd e", "K7QM-42XD-E"), ("9xr4-tlnb-3", "9XR4-T1NB-3"),
            ("hORN-7BIZ-$", "H0RN-7B1Z-$"), ("t3kv9me6u", "T3KV-9ME6-U"),
            ("K7QM-42XD-P", nil), ("K7QM-42XU-E", nil), ("K7QM-42XD", nil), ("K7QM-42XD-EE", nil),
        ] as [(String, String?)])
    func contractVectors(input: String, canonical: String?) {
        #expect(ReferralCode.parse(input)?.canonical == canonical)
    }

    @Test(arguments: [" K7QM-42XD-E ", "\tk7qm\n42xd\r-e", "k\u{0B}7qm\u{0C}42xd--e", "K-7-Q-M-4-2-X-D-E"])
    func dropsAsciiWhitespaceAndDashes(input: String) {
        #expect(ReferralCode.parse(input)?.canonical == "K7QM-42XD-E")
    }

    @Test(arguments: [
        "", "---------", "\u{212A}7QM-42XD-E",  // Kelvin sign: equal to "K" under String ==, but not a symbol
        "K7QM-42XD-E\u{0}", "K7QM\u{00A0}42XD-E", "K7QM_42XD_E", "K7QM-42XD-E-K7QM-42XD-E",
        "U7QM-42XD-E",  // U only as the check symbol
    ])
    func rejectsLookAlikesAndJunk(input: String) {
        #expect(ReferralCode.parse(input) == nil)
    }

    @Test func worksFromBitsAsTheWorkedExampleSays() {
        // K7QM42XD = 661144079277; 661144079277 mod 37 = 14 -> E.
        #expect(ReferralCode(randomBits: 661_144_079_277).canonical == "K7QM-42XD-E")
        // Only the low 40 bits are used.
        #expect(ReferralCode(randomBits: 661_144_079_277 | 0xFFFF_FF00_0000_0000).canonical == "K7QM-42XD-E")
        #expect(ReferralCode(randomBits: 0).canonical == "0000-0000-0")
        #expect(ReferralCode(randomBits: 1 << 40 - 1).canonical == "ZZZZ-ZZZZ-F")  // 1099511627775 mod 37 = 15
    }

    @Test func alphanumericMeansACheckSymbolAmongTheDataSymbols() throws {
        #expect(try #require(ReferralCode.parse("K7QM-42XD-E")).isAlphanumeric)
        #expect(try #require(ReferralCode.parse("H0RN-7B1Z-$")).isAlphanumeric == false)
        #expect(try #require(ReferralCode.parse("T3KV-9ME6-U")).isAlphanumeric == false)
    }

    @Test func generatedCodesParseBackToThemselves() {
        var rng = SeededGenerator(state: 20_261_123)
        var checkSymbolsSeen = Set<Character>()
        for _ in 0..<20_000 {
            let code = ReferralCode(randomBits: rng.next())
            #expect(ReferralCode.parse(code.canonical) == code)
            #expect(ReferralCode.parse(code.canonical.lowercased().replacingOccurrences(of: "-", with: " ")) == code)
            checkSymbolsSeen.insert(code.canonical.last!)
            #expect(code.isAlphanumeric == !"*~$=U".contains(code.canonical.last!))
        }
        #expect(checkSymbolsSeen.count == 37)
    }
}
