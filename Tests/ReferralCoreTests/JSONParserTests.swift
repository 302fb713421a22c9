import Testing

@testable import ReferralCore

@Suite struct JSONParserTests {
    static func parse(_ bytes: [UInt8], _ limits: JSONLimits = JSONLimits()) -> Result<JSONValue, JSONParseError> {
        Result { () throws(JSONParseError) in try JSONValue.parse(bytes, limits: limits) }
    }

    @Test(arguments: [
        "{}", "[]", " \t\r\n{\"a\" : [ 1 , -0 , 0.5 , 1e9 , -1E-9 , 2.5e+3 ] } \n", "\"\"", "null", "true", "false",
        "0", "-0", "123456789012345678901234567890", "\"\\u00e9\\uD83D\\uDE00 \\\" \\\\ \\/ \\b\\f\\n\\r\\t\"",
        "\"\\u0000\"", "\"\u{7F}\"", "\"é😀\u{FFFF}\u{10FFFF}\"", "[[],[[]],{}]",
        "{\"a\":1,\"A\":2}",  // keys are case-sensitive: not duplicates
        "{\"\u{212A}\":1,\"K\":2}",  // Kelvin sign and K: canonically equivalent, byte-different, not duplicates
    ])
    func acceptsValidDocuments(_ text: String) {
        #expect(throws: Never.self) { try JSONValue.parse(Array(text.utf8)) }
    }

    /// Invalid documents and the byte offset of the failure.
    @Test(
        arguments: [
            ([], 0, "empty document"),
            (Array("  ".utf8), 2, "only whitespace"),
            ([0xEF, 0xBB, 0xBF] + Array("{}".utf8), 0, "byte-order mark"),
            (Array("NaN".utf8), 0, "'N' where a value was expected"),
            (Array("[Infinity]".utf8), 1, "'I' where a value was expected"),
            (Array("-Infinity".utf8), 1, "expected a digit"),
            (Array("[1,]".utf8), 3, "']' where a value was expected"),
            (Array("{\"a\":1,}".utf8), 7, "expected a string key"),
            (Array("{'a':1}".utf8), 1, "expected a string key"),
            (Array("[01]".utf8), 2, "leading zero"),
            (Array("[-01]".utf8), 3, "leading zero"),
            (Array("[1.]".utf8), 3, "after the decimal point"),
            (Array("[.5]".utf8), 1, "where a value was expected"),
            (Array("[+1]".utf8), 1, "where a value was expected"),
            (Array("[1e]".utf8), 3, "in the exponent"),
            (Array("{\"a\":1".utf8), 6, "unexpected end of input"),
            (Array("{\"a\":\"bc".utf8), 8, "inside a string"),
            (Array("[tru]".utf8), 1, "expected 'true'"),
            (Array("\"a\nb\"".utf8), 2, "control character 0x0A"),
            (Array("\"\t\"".utf8), 1, "control character 0x09"),
            (Array("\"\\x\"".utf8), 1, "invalid escape \\x"),
            (Array("\"\\u12G4\"".utf8), 5, "hex digit"),
            (Array("\"\\uD83D\"".utf8), 1, "lone high surrogate"),
            (Array("\"\\uD83Dx\"".utf8), 1, "lone high surrogate"),
            (Array("\"\\uD83D\\u0041\"".utf8), 1, "lone high surrogate"),
            (Array("\"\\uDE00\"".utf8), 1, "lone low surrogate"),
            ([0x22, 0xC0, 0xAF, 0x22], 1, "overlong"),  // '/' in two bytes
            ([0x22, 0xE0, 0x80, 0xAF, 0x22], 1, "overlong"),  // '/' in three bytes
            ([0x22, 0xF0, 0x80, 0x80, 0xAF, 0x22], 1, "overlong"),  // '/' in four bytes
            ([0x22, 0xED, 0xA0, 0x80, 0x22], 1, "encoded surrogate"),  // U+D800 in UTF-8
            ([0x22, 0xF4, 0x90, 0x80, 0x80, 0x22], 1, "beyond U+10FFFF"),
            ([0x22, 0xE9, 0x22], 1, "truncated sequence"),  // Latin-1 é
            ([0x22, 0xE2, 0x82], 1, "truncated sequence"),  // cut at the end of the body
            ([0x22, 0x80, 0x22], 1, "continuation byte"),
            ([0x22, 0xFF, 0x22], 1, "never occurs in UTF-8"),
            ([0xE9], 0, "0xE9 where a value was expected"),
            (Array("{} {}".utf8), 3, "after the JSON value"),
            (Array("{}x".utf8), 2, "after the JSON value"),
            (Array("[1 2]".utf8), 3, "expected ',' or ']'"),
            (Array("{\"a\" 1}".utf8), 5, "expected ':'"),
            (Array("{\"amount\":1,\"amount\":2}".utf8), 12, "duplicate object key \"amount\""),
            (Array("/*c*/{}".utf8), 0, "'/' where a value was expected"),
        ] as [([UInt8], Int, String)])
    func rejectsInvalidDocuments(bytes: [UInt8], offset: Int, reason: String) throws {
        guard case .failure(let error) = Self.parse(bytes) else {
            Issue.record("accepted \(bytes)")
            return
        }
        #expect(error.kind == .syntax)
        #expect(error.offset == offset)
        #expect(error.reason.contains(reason), "\(error)")
        #expect(isHeaderSafe(error.description))
    }

    @Test func nestingIsLimitedAt64ByDefault() throws {
        let deep64 = Array(repeating: UInt8(ascii: "["), count: 64) + Array(repeating: UInt8(ascii: "]"), count: 64)
        let deep65 = Array(repeating: UInt8(ascii: "["), count: 65) + Array(repeating: UInt8(ascii: "]"), count: 65)
        #expect(throws: Never.self) { try JSONValue.parse(deep64) }
        let error = try #require(Self.parse(deep65).failure)
        #expect(error.kind == .limit)
        #expect(error.offset == 64)
        // A hostile 100,000 levels fails the same way, fast and without exhausting the stack.
        let hostile = Array(repeating: UInt8(ascii: "["), count: 100_000)
        #expect(Self.parse(hostile).failure?.kind == .limit)
        #expect(Self.parse(Array("{\"a\":{\"b\":[1]}}".utf8), JSONLimits(maxDepth: 2)).failure?.offset == 10)
    }

    @Test func stringsAndValuesAreLimited() {
        let limits = JSONLimits(maxStringBytes: 8, maxValues: 4)
        // The defaults are the body limit: nothing inside a 256 KiB body is too long or too many.
        #expect(Self.parse(Array(("\"" + String(repeating: "x", count: 200_000) + "\"").utf8)).failure == nil)
        #expect(Self.parse(Array("\"12345678\"".utf8), limits).failure == nil)
        #expect(Self.parse(Array("\"123456789\"".utf8), limits).failure?.kind == .limit)
        #expect(Self.parse(Array("\"\\u00e9\\u00e9\\u00e9\\u00e9\"".utf8), limits).failure == nil)  // 8 bytes decoded
        #expect(Self.parse(Array("\"\\u00e9\\u00e9\\u00e9\\u00e9x\"".utf8), limits).failure?.kind == .limit)
        #expect(Self.parse(Array("123456789".utf8), limits).failure?.kind == .limit)
        #expect(Self.parse(Array("[1,2,3]".utf8), limits).failure == nil)
        #expect(Self.parse(Array("[1,2,3,4]".utf8), limits).failure?.reason == "more than 4 values")
    }

    @Test func objectsKeepOrderAndCompareUnordered() throws {
        let value = try JSONValue.parse(Array("{\"b\":1,\"a\":[true,null],\"c\":\"x\"}".utf8))
        let object = try #require(value.objectValue)
        #expect(object.keys == ["b", "a", "c"])
        #expect(object["a"] == .array([.bool(true), .null]))
        #expect(object["\u{212A}"] == nil)
        #expect(value == .object(["c": .string("x"), "a": .array([.bool(true), .null]), "b": .integer(1)]))
        #expect(value != .object(["c": .string("x"), "a": .array([.null, .bool(true)]), "b": .integer(1)]))
        #expect(JSONValue.string("\u{212A}") != .string("K"))
    }

    @Test(
        arguments: [
            ("0", true, Int64(0)), ("-0", true, 0), ("5000", true, 5000), ("5e3", true, 5000), ("5000.0", true, 5000),
            ("5.000e3", true, 5000), ("50000e-1", true, 5000), ("0.0e999999999999", true, 0),
            ("9223372036854775807", true, .max), ("-9223372036854775808", true, .min),
            ("9223372036854775808", true, nil), ("-9223372036854775809", true, nil), ("1e19", true, nil),
            ("1e999999999999999999", true, nil), ("49.99", false, nil), ("5e-1", false, nil), ("1.5e2", true, 150),
        ] as [(String, Bool, Int64?)])
    func numbersKeepTheirLexemeAndExactIntegerValue(lexeme: String, integral: Bool, value: Int64?) throws {
        guard case .number(let n) = try JSONValue.parse(Array(lexeme.utf8)) else {
            Issue.record("not a number")
            return
        }
        #expect(n.lexeme == lexeme)
        #expect(n.isIntegral == integral)
        #expect(n.int64 == value)
        #expect(n.hasFractionOrExponent == (lexeme.contains(".") || lexeme.contains("e")))
    }

    @Test func writerEscapesAndRoundTrips() throws {
        let value = JSONValue.object([
            "text": .string("quote \" backslash \\ nl \n tab \t nul \u{0} bell \u{7} del \u{7F} é 😀"),
            "n": .integer(-42), "list": .array([.null, .bool(false), .number(try #require(Self.number("1.5e2")))]),
        ])
        let text = String(decoding: value.encoded(), as: UTF8.self)
        #expect(
            text == #"{"text":"quote \" backslash \\ nl \n tab \t nul \u0000 bell \u0007 del "# + "\u{7F} é 😀"
                + #"","n":-42,"list":[null,false,1.5e2]}"#)
        #expect(try JSONValue.parse(value.encoded()) == value)
    }

    static func number(_ lexeme: String) -> JSONNumber? {
        if case .number(let n)? = try? JSONValue.parse(Array(lexeme.utf8)) { n } else { nil }
    }
}

extension Result {
    var failure: Failure? { if case .failure(let e) = self { e } else { nil } }
}
