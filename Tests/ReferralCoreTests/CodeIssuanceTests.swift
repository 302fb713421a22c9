import ReferralTestKit
import Testing

@testable import ReferralCore

@Suite struct CodeIssuanceTests {
    @Test func drawnCodesAreAlphanumericAndParseBack() {
        var rng = SeededGenerator(state: 7)
        for _ in 0..<2_000 {
            let code = CodeIssuance.draw(using: &rng)
            #expect(code.isAlphanumeric)
            #expect(ReferralCode.parse(code.canonical) == code)
        }
    }
}
