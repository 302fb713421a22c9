import Postgres
import Testing

@Suite("PostgresURL")
struct PostgresURLTests {
    @Test func parsesEveryPartAndPercentDecodes() throws {
        let url = try PostgresURL(
            parsing:
                "postgresql://app%20user:p%40ss%3Aw%2Fd%25@db.example.com:6432/referral%2Fdb"
                + "?sslmode=verify-full&sslrootcert=/etc/ca%20dir/root.crt&sslcert=/c.crt&sslkey=/c.key"
                + "&application_name=referrald%201&connect_timeout=7")
        #expect(url.user == "app user")
        #expect(url.password == "p@ss:w/d%")
        #expect(url.host == "db.example.com")
        #expect(url.port == 6432)
        #expect(url.database == "referral/db")
        #expect(url.sslMode == "verify-full")
        #expect(url.sslRootCert == "/etc/ca dir/root.crt")
        #expect(url.sslCert == "/c.crt")
        #expect(url.sslKey == "/c.key")
        #expect(url.applicationName == "referrald 1")
        #expect(url.connectTimeout == 7)
    }

    @Test func defaultsAndMinimalForms() throws {
        let url = try PostgresURL(parsing: "postgres://localhost")
        #expect(url.host == "localhost")
        #expect(url.port == 5432)
        #expect(url.user == nil)
        #expect(url.password == nil)
        #expect(url.database == nil)
        #expect(url.sslMode == nil)

        let userOnly = try PostgresURL(parsing: "postgres://alice@h/db")
        #expect(userOnly.user == "alice")
        #expect(userOnly.password == nil)
        #expect(userOnly.database == "db")
    }

    @Test func ipv6HostAndUnencodedAtInPassword() throws {
        let v6 = try PostgresURL(parsing: "postgres://u:pw@[::1]:5433/db")
        #expect(v6.host == "::1")
        #expect(v6.port == 5433)
        #expect(v6.description == "postgres://u:***@[::1]:5433/db")

        // The last "@" separates the user info, so a raw "@" in a password still parses.
        let raw = try PostgresURL(parsing: "postgres://u:a@b@host/db")
        #expect(raw.password == "a@b")
        #expect(raw.host == "host")
    }

    @Test func descriptionRedactsThePassword() throws {
        let url = try PostgresURL(parsing: "postgres://bob:s3cr%21t@h:5432/d?sslmode=require")
        #expect(url.description == "postgres://bob:***@h:5432/d?sslmode=require")
        #expect(!url.description.contains("s3cr"))
        #expect(!"\(url)".contains("s3cr"))

        let passwordWithoutUser = try PostgresURL(parsing: "postgres://:hunter2@h/d")
        #expect(!passwordWithoutUser.description.contains("hunter2"))
        #expect(passwordWithoutUser.description.contains("***"))
    }

    @Test(arguments: [
        "mysql://u:p@h/db",  // scheme
        "postgres://u:p@h:99999/db",  // port out of range
        "postgres://u:p@h:abc/db",  // port not a number
        "postgres://u:p@/db",  // no host
        "postgres://u:p@[::1/db",  // unterminated IPv6
        "postgres://u:p%zz@h/db",  // bad escape
        "postgres://u:p%4@h/db",  // truncated escape
        "postgres://u:p%ff@h/db",  // escape that is not UTF-8
        "postgres://u:p@h/db?sslmod=verify-full",  // typo must not downgrade TLS silently
        "postgres://u:p@h/db?sslmode=verify",  // unknown sslmode
        "postgres://u:p@h/db?connect_timeout=soon",  // timeout not a number
        "postgres://u:p@h/db?sslmode",  // no '='
    ])
    func rejectsMalformedURLs(_ text: String) {
        #expect(throws: PostgresError.self) { try PostgresURL(parsing: text) }
    }

    /// An unencoded '/' or '?' in the password once put the rest of it in the database or a
    /// query key (`postgres://u:pa?topsecret=1@h/db` said "unsupported query parameter
    /// 'topsecret'").
    @Test(arguments: [
        "postgres://u:pa/topsecret@h/db",
        "postgres://u:pa?topsecret=1@h/db",
        "postgresql://u:pa?topsecret@h:5432/db?sslmode=require",
        "postgres://u:5432/topsecret@h",
    ])
    func refusesAnUnencodedSlashOrQuestionMarkInTheUserinfo(_ text: String) {
        do {
            let url = try PostgresURL(parsing: text)
            Issue.record("accepted, host \(url.host), database \(url.database ?? "-")")
        } catch {
            #expect(error.code == .invalidURL)
            #expect(error.description.contains("%2F") || error.debugDescription.contains("%2F"))
            #expect(!error.description.contains("secret"))
            #expect(!error.debugDescription.contains("secret"))
        }
    }

    @Test func encodedDelimitersInThePasswordParse() throws {
        let url = try PostgresURL(parsing: "postgres://u:pa%2Fs%3Fs@h/db?application_name=a%40b")
        #expect(url.password == "pa/s?s")
        #expect(url.host == "h")
        #expect(url.applicationName == "a@b")
    }

    @Test func severalHostsAndNetworkParameters() throws {
        let url = try PostgresURL(
            parsing:
                "postgres://u:pw@db1:5432,[::1]:5433,db3/referrald?target_session_attrs=read-write"
                + "&keepalives=1&keepalives_idle=5&keepalives_interval=2&keepalives_count=3&tcp_user_timeout=9000"
                + "&options=-c%20search_path%3Dreferral")
        #expect(
            url.hosts == [
                .init(host: "db1", port: 5432), .init(host: "::1", port: 5433), .init(host: "db3", port: 5432),
            ])
        #expect(url.host == "db1")
        #expect(
            url.networkParameters == [
                "target_session_attrs": "read-write", "keepalives": "1", "keepalives_idle": "5",
                "keepalives_interval": "2", "keepalives_count": "3", "tcp_user_timeout": "9000",
                "options": "-c search_path=referral",
            ])
        #expect(
            url.description == "postgres://u:***@db1:5432,[::1]:5433,db3:5432/referrald?keepalives=1&keepalives_count=3"
                + "&keepalives_idle=5&keepalives_interval=2&options=-c search_path=referral"
                + "&target_session_attrs=read-write&tcp_user_timeout=9000")
    }

    @Test(arguments: [
        "postgres://u:p@h/db?keepalives=2",
        "postgres://u:p@h/db?keepalives_idle=-1",
        "postgres://u:p@h/db?tcp_user_timeout=soon",
        "postgres://u:p@h/db?target_session_attrs=writable",
        "postgres://u:p@h1,/db",
        "postgres://u:p@h1,h2:0/db",
    ])
    func rejectsBadNetworkParameters(_ text: String) {
        #expect(throws: PostgresError.self) { try PostgresURL(parsing: text) }
    }

    @Test func parseErrorsNeverQuoteThePassword() {
        for text in [
            "postgres://u:topsecret@h:notaport/db", "postgres://u:topsecret%zz@h/db",
            "postgres://u:topsecret@h/db?bogus=1",
        ] {
            do {
                _ = try PostgresURL(parsing: text)
                Issue.record("expected \(text) to be rejected")
            } catch {
                #expect(error.code == .invalidURL)
                #expect(!error.description.contains("topsecret"))
                #expect(!error.debugDescription.contains("topsecret"))
            }
        }
    }
}

@Suite("PostgresError")
struct PostgresErrorTests {
    @Test(arguments: [
        ("40001", true), ("40P01", true), ("57P01", true), ("57P02", true), ("57P03", true),
        ("08006", true), ("08001", true), ("53300", true), ("53100", true), ("55P03", true),
        ("23505", false), ("42601", false), ("22P02", false), ("57014", false), ("42P01", false),
    ])
    func classifiesServerErrorsBySQLState(_ sqlState: String, _ transient: Bool) {
        let error = PostgresError(code: .server, context: "query", sqlState: sqlState)
        #expect(error.isTransient == transient)
    }

    @Test func connectionCodesAreTransientDecodingIsNot() {
        #expect(PostgresError(code: .connectionLost, context: "query").isTransient)
        #expect(PostgresError(code: .connectionFailed, context: "connect").isTransient)
        #expect(!PostgresError(code: .unexpectedNull, context: "decode").isTransient)
        #expect(!PostgresError(code: .connectionClosed, context: "query").isTransient)
    }

    @Test func descriptionLeavesOutMessageAndDetail() {
        let error = PostgresError(
            code: .server, context: "execute", sqlState: "23505",
            message: "duplicate key value violates unique constraint \"users_email_key\"",
            detail: "Key (email)=(alice@example.com) already exists.", constraint: "users_email_key")
        #expect(error.description.contains("23505"))
        #expect(error.description.contains("users_email_key"))
        #expect(error.description.contains("execute"))
        #expect(!error.description.contains("alice@example.com"))
        #expect(error.debugDescription.contains("alice@example.com"))
    }
}
