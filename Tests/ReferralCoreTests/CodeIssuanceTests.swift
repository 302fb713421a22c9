import Testing
@testable import ReferralCore

@Suite struct CodeIssuanceTests {
    let t0 = Instant(seconds: 1_795_000_000)

    @Test func oneCodePerAccountFromItsEarliestActivation() {
        let acts: [CodeIssuance.Activation] = [
            .init(accountId: "a", activatedAt: t0 + .days(3), segment: "consumer"),
            .init(accountId: "b", activatedAt: t0, segment: "business"),
            .init(accountId: "a", activatedAt: t0, segment: "business"),  // earlier, arrived later
            .init(accountId: "a", activatedAt: t0 + .days(3), segment: "consumer"),  // duplicate
        ]
        let first = CodeIssuance.firstActivations(acts, accountsWithCodes: [])
        #expect(first.map(\.accountId) == ["a", "b"])
        #expect(first[0].activatedAt == t0)
        #expect(first[0].segment == "business")
    }

    @Test func accountsWithACodeGetNoOther() {
        let acts: [CodeIssuance.Activation] = [.init(accountId: "a", activatedAt: t0, segment: nil)]
        #expect(CodeIssuance.firstActivations(acts, accountsWithCodes: ["a"]).isEmpty)
    }

    @Test func drawnCodesAreAlphanumericAndParseBack() {
        var rng = SeededGenerator(state: 7)
        for _ in 0..<2_000 {
            let code = CodeIssuance.draw(using: &rng)
            #expect(code.isAlphanumeric)
            #expect(ReferralCode.parse(code.canonical) == code)
        }
    }
}
