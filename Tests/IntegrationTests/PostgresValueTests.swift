import Postgres
import Testing

/// Values sent as parameters and read back through the real server: both the encoder and the
/// decoder have to agree with PostgreSQL, not merely with each other.
@Suite("Postgres values")
struct PostgresValueTests {
    static let nastyStrings: [String?] = [
        "plain", "", " ", "  padded  ", "NULL", "null", nil, "\"", "\"quoted\"", "\\", "\\\\",
        "back\\slash\"quote", "a,b", "{", "}", "{a,b}", "{\"x\"}", "'single'", "tab\tand\nnewline",
        "ünïcødé", "日本語", "emoji 👩‍👩‍👧 family", "\u{200B}zero width", "ends with backslash\\",
        "x\"", "NULL ", ",", "\\N", "$1",
    ]

    @Test func textArrayRoundTripsNastyStrings() async throws {
        try await withTestConnection { db in
            let rows = try await db.query(
                "SELECT ordinality AS i, v FROM unnest($1::text[]) WITH ORDINALITY AS u(v, ordinality) ORDER BY i",
                [.textArray(Self.nastyStrings)])
            #expect(rows.count == Self.nastyStrings.count)
            let back = try rows.map { try $0.decodeIfPresent("v", as: String.self) }
            #expect(back == Self.nastyStrings)
            // The string "NULL" must arrive as text, the real nil as SQL NULL.
            let nulls = try rows.filter { try $0.isNull("v") }.map { try $0.decode("i", as: Int.self) }
            #expect(nulls == [Self.nastyStrings.firstIndex(of: nil)! + 1])
        }
    }

    @Test func textScalarRoundTripsNastyStrings() async throws {
        try await withTestConnection { db in
            for string in Self.nastyStrings {
                let row = try #require(try await db.query("SELECT $1::text AS v", [PostgresValue(string)]).first)
                #expect(try row.decodeIfPresent("v", as: String.self) == string)
            }
        }
    }

    @Test func emptyAndAllNullArrays() async throws {
        try await withTestConnection { db in
            let row = try #require(
                try await db.query(
                    "SELECT cardinality($1::text[]) AS a, cardinality($2::int8[]) AS b, cardinality($3::bool[]) AS c, "
                        + "cardinality($4::text[]) AS d, ($4::text[])[1] IS NULL AS d_null",
                    [.textArray([]), .int8Array([]), .boolArray([]), .textArray([nil, nil])]
                ).first)
            #expect(try row.decode("a", as: Int.self) == 0)
            #expect(try row.decode("b", as: Int.self) == 0)
            #expect(try row.decode("c", as: Int.self) == 0)
            #expect(try row.decode("d", as: Int.self) == 2)
            #expect(try row.decode("d_null", as: Bool.self))
        }
    }

    @Test func setBasedInsertWithParallelArrays() async throws {
        try await withTestConnection { db in
            let codes: [String?] = ["a,b", "NULL", nil, "{}"]
            let amounts: [Int64?] = [Int64.min, nil, 0, Int64.max]
            let flags: [Bool?] = [true, false, nil, true]
            let inserted = try await db.transaction { db in
                try db.execute("CREATE TABLE t (n int8, code text, amount int8, flag bool)")
                return try db.execute(
                    "INSERT INTO t SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::bool[])",
                    [.int8Array([1, 2, 3, 4]), .textArray(codes), .int8Array(amounts), .boolArray(flags)])
            }
            #expect(inserted == 4)
            let rows = try await db.query("SELECT code, amount, flag FROM t ORDER BY n")
            #expect(try rows.map { try $0.decodeIfPresent("code", as: String.self) } == codes)
            #expect(try rows.map { try $0.decodeIfPresent("amount", as: Int64.self) } == amounts)
            #expect(try rows.map { try $0.decodeIfPresent("flag", as: Bool.self) } == flags)
        }
    }

    @Test func typedDecodeOfEachType() async throws {
        try await withTestConnection { db in
            let row = try #require(
                try await db.query(
                    """
                    SELECT 'héllo'::text AS s, 9007199254740993::int8 AS big, 42::int4 AS i4, true AS yes,
                           false AS no, 1.5::float8 AS f, '\\x00ff7f'::bytea AS b, ''::bytea AS empty_b,
                           '2026-11-23 10:31:07.123456+00'::timestamptz AS ts, NULL::text AS nothing
                    """
                ).first)
            #expect(row.columnNames == ["s", "big", "i4", "yes", "no", "f", "b", "empty_b", "ts", "nothing"])
            #expect(try row.decode("s", as: String.self) == "héllo")
            #expect(try row.decode("big", as: Int64.self) == 9_007_199_254_740_993)
            #expect(try row.decode("i4", as: Int32.self) == 42)
            #expect(try row.decode("i4", as: Int.self) == 42)
            #expect(try row.decode("yes", as: Bool.self) == true)
            #expect(try row.decode("no", as: Bool.self) == false)
            #expect(try row.decode("f", as: Double.self) == 1.5)
            #expect(try row.decode("b", as: [UInt8].self) == [0x00, 0xff, 0x7f])
            #expect(try row.decode("empty_b", as: [UInt8].self) == [])
            let ts = try row.decode("ts", as: PostgresTimestamp.self)
            #expect(ts.microsecondsSinceEpoch == 1_795_429_867_123_456)
            #expect(try row.decodeIfPresent("nothing", as: String.self) == nil)
            #expect(try row.decode(0, as: String.self) == "héllo")
        }
    }

    @Test func nullIntoNonOptionalNamesColumnAndType() async throws {
        try await withTestConnection { db in
            let row = try #require(try await db.query("SELECT NULL::int8 AS referral_id").first)
            let error = try #require(throws: PostgresError.self) { try row.decode("referral_id", as: Int64.self) }
            #expect(error.code == .unexpectedNull)
            #expect(error.column == "referral_id")
            #expect(error.expectedType == "Int64")
            #expect(error.description.contains("referral_id"))
            #expect(error.description.contains("Int64"))
        }
    }

    @Test func decodeErrorsNameColumnButNotValue() async throws {
        try await withTestConnection { db in
            let row = try #require(
                try await db.query(
                    "SELECT 'secret-value'::text AS code, '\\x41'::text AS looks_like_bytea, "
                        + "'2026-01-01 00:00:00'::timestamp AS naive"
                ).first)
            let mismatch = try #require(throws: PostgresError.self) { try row.decode("code", as: Int64.self) }
            #expect(mismatch.code == .typeMismatch)
            #expect(mismatch.column == "code")
            #expect(!mismatch.description.contains("secret-value"))
            #expect(!mismatch.debugDescription.contains("secret-value"))
            // Text that happens to look like bytea hex is not bytes.
            let notBytes = try #require(throws: PostgresError.self) {
                try row.decode("looks_like_bytea", as: [UInt8].self)
            }
            #expect(notBytes.code == .typeMismatch)
            // A timestamp without time zone is refused rather than guessed to be UTC.
            let naive = try #require(throws: PostgresError.self) { try row.decode("naive", as: PostgresTimestamp.self) }
            #expect(naive.code == .typeMismatch)
            let missing = try #require(throws: PostgresError.self) { try row.decode("nope", as: String.self) }
            #expect(missing.code == .columnNotFound)
            #expect(missing.column == "nope")
            let outOfRange = try #require(throws: PostgresError.self) { try row.decode(3, as: String.self) }
            #expect(outOfRange.code == .columnNotFound)
        }
    }

    @Test func scalarParametersRoundTrip() async throws {
        try await withTestConnection { db in
            let doubles: [Double] = [
                0, -0.0, 0.1, 1.0 / 3.0, 1e300, -2.5e-300, .leastNonzeroMagnitude, .greatestFiniteMagnitude,
                .infinity, -.infinity,
            ]
            for d in doubles {
                let row = try #require(try await db.query("SELECT $1 AS v", [.double(d)]).first)
                let back = try row.decode("v", as: Double.self)
                #expect(back == d && back.sign == d.sign, "\(d)")
            }
            let nan = try #require(try await db.query("SELECT $1 AS v", [.double(.nan)]).first)
            #expect(try nan.decode("v", as: Double.self).isNaN)

            for n in [Int64.min, -1, 0, 1, Int64.max] {
                let row = try #require(try await db.query("SELECT $1 AS v, $1 + 0 AS arithmetic", [.int(n)]).first)
                #expect(try row.decode("v", as: Int64.self) == n)
                #expect(try row.decode("arithmetic", as: Int64.self) == n)
            }
            let bools = try #require(
                try await db.query("SELECT $1 AS t, $2 AS f, $3::bool AS n", [true, false, nil]).first)
            #expect(try bools.decode("t", as: Bool.self) == true)
            #expect(try bools.decode("f", as: Bool.self) == false)
            #expect(try bools.decodeIfPresent("n", as: Bool.self) == nil)

            let allBytes = (0...255).map { UInt8($0) }
            let bytes = try #require(try await db.query("SELECT $1 AS v, length($1) AS n", [.bytes(allBytes)]).first)
            #expect(try bytes.decode("v", as: [UInt8].self) == allBytes)
            #expect(try bytes.decode("n", as: Int.self) == 256)
            // bytea goes in binary format: an empty one must arrive empty, not as NULL.
            let empty = try #require(try await db.query("SELECT $1 AS v, $1 IS NULL AS isnull", [.bytes([])]).first)
            #expect(try empty.decode("v", as: [UInt8].self) == [])
            #expect(try empty.decode("isnull", as: Bool.self) == false)
        }
    }

    @Test func untypedTextFillsNonTextColumnsAndTypedArraysResolveAny() async throws {
        try await withTestConnection { db in
            try await db.execute("CREATE TABLE u (id uuid PRIMARY KEY, doc jsonb, n int4)")
            try await db.execute(
                "INSERT INTO u VALUES ($1, $2, $3)",
                ["6f1c2f6e-8d2a-4a57-9a43-6b4f0e0f5b01", "{\"k\": [1, \"two\"]}", 7])
            let row = try #require(
                try await db.query(
                    "SELECT doc->'k'->>1 AS second FROM u WHERE id = $1 AND n = ANY($2)",
                    ["6f1c2f6e-8d2a-4a57-9a43-6b4f0e0f5b01", .int8Array([3, 7])]
                ).first)
            #expect(try row.decode("second", as: String.self) == "two")
        }
    }

    @Test func textWithNulIsRejectedBeforeSending() async throws {
        try await withTestConnection { db in
            let scalar = await #expect(throws: PostgresError.self) {
                try await db.query("SELECT $1::text", ["a\u{0}b"])
            }
            #expect(scalar?.code == .invalidParameter)
            let element = await #expect(throws: PostgresError.self) {
                try await db.query("SELECT $1::text[]", [.textArray(["ok", "a\u{0}b"])])
            }
            #expect(element?.code == .invalidParameter)
            #expect(await db.isConnected)
        }
    }
}

@Suite("Postgres timestamps")
struct PostgresTimestampTests {
    static let samples: [Int64] = [
        0, 1, -1, 999_999, -999_999, -1_000_000, -1_000_001,
        1_795_429_867_123_456,  // 2026-11-23T10:31:07.123456Z
        1_709_164_800_000_000,  // 2024-02-29T00:00:00Z, a leap day
        951_782_400_000_000,  // 2000-02-29T00:00:00Z, leap day of a 400-year century
        -2_203_891_200_000_001,  // 1900-02-28T23:59:59.999999Z, just before a non-leap March
        -14_182_940_000_000,  // 1969-07-20T20:17:40Z
        -62_135_596_800_000_000,  // 0001-01-01T00:00:00Z, first day AD
        -62_135_596_800_000_001,  // 1 BC, last microsecond
        -210_866_803_200_000_000,  // 4714-11-24 BC, PostgreSQL's earliest timestamp
        253_402_300_799_999_999,  // 9999-12-31T23:59:59.999999Z
        253_402_300_800_000_000,  // 10000-01-01, a five-digit year
    ]

    @Test func roundTripsMicrosecondsIncludingBefore1970() async throws {
        try await withTestConnection { db in
            for micros in Self.samples {
                let row = try #require(
                    try await db.query(
                        // The server's own epoch arithmetic checks the encoder independently of the decoder.
                        "SELECT $1 AS ts, (extract(epoch FROM $1) * 1000000)::int8 AS server_micros",
                        [.timestamp(microsecondsSinceEpoch: micros)]
                    ).first)
                #expect(try row.decode("server_micros", as: Int64.self) == micros, "encoding \(micros)")
                #expect(
                    try row.decode("ts", as: PostgresTimestamp.self).microsecondsSinceEpoch == micros,
                    "decoding \(micros)")
            }
        }
    }

    @Test func decodesOffsetsWhenTheSessionZoneWasChanged() async throws {
        try await withTestConnection { db in
            let micros: Int64 = -2_208_988_800_000_000  // 1900-01-01T00:00:00Z
            try await db.execute("SET TimeZone = 'Europe/Amsterdam'")  // +00:19:32 in 1900
            let row = try #require(
                try await db.query(
                    "SELECT $1 AS old, $2 AS recent, $1::text AS old_text",
                    [
                        .timestamp(microsecondsSinceEpoch: micros),
                        .timestamp(microsecondsSinceEpoch: 1_795_429_867_000_001),
                    ]
                ).first)
            #expect(try row.decode("old_text", as: String.self).hasSuffix("+00:19:32"))
            #expect(try row.decode("old", as: PostgresTimestamp.self).microsecondsSinceEpoch == micros)
            #expect(
                try row.decode("recent", as: PostgresTimestamp.self).microsecondsSinceEpoch == 1_795_429_867_000_001)
        }
    }

    @Test func infinityIsATypeMismatchNotADate() async throws {
        try await withTestConnection { db in
            let row = try #require(try await db.query("SELECT 'infinity'::timestamptz AS t").first)
            #expect(throws: PostgresError.self) { try row.decode("t", as: PostgresTimestamp.self) }
        }
    }
}
