import Testing

@testable import AMQP

@Suite("AMQPURL parsing and redaction (no broker)")
struct AMQPURLTests {
    @Test func parsesEveryPart() throws {
        let url = try AMQPURL(parsing: "amqp://referrald:s3cret@broker.internal:5673/referrald_test")
        #expect(
            url
                == AMQPURL(
                    user: "referrald", password: "s3cret", host: "broker.internal", port: 5673, vhost: "referrald_test")
        )
        #expect(!url.useTLS)
    }

    @Test func defaultPortsDependOnScheme() throws {
        #expect(try AMQPURL(parsing: "amqp://u:p@h/v").port == 5672)
        let tls = try AMQPURL(parsing: "AMQPS://u:p@h/v")
        #expect(tls.port == 5671)
        #expect(tls.useTLS)
    }

    @Test(arguments: [
        ("amqp://u:p@h", "/"),
        ("amqp://u:p@h/", "/"),
        ("amqp://u:p@h/%2f", "/"),
        ("amqp://u:p@h/%2Fprod", "/prod"),
        ("amqp://u:p@h/a%20b", "a b"),
        ("amqp://u:p@h:5672/referrald", "referrald"),
    ])
    func decodesVhost(text: String, vhost: String) throws {
        #expect(try AMQPURL(parsing: text).vhost == vhost)
    }

    @Test func percentDecodesCredentials() throws {
        let url = try AMQPURL(parsing: "amqp://us%40er:p%3Ass%2Fw%40rd@h/v")
        #expect(url.user == "us@er")
        #expect(url.password == "p:ss/w@rd")
    }

    @Test func missingCredentialsMeanGuest() throws {
        let url = try AMQPURL(parsing: "amqp://localhost")
        #expect(url.user == "guest")
        #expect(url.password == "guest")
    }

    @Test func ipv6Host() throws {
        let url = try AMQPURL(parsing: "amqp://u:p@[::1]:5679/v")
        #expect(url.host == "::1")
        #expect(url.port == 5679)
        #expect(url.description == "amqp://u:***@[::1]:5679/v")
    }

    @Test func descriptionRedactsThePasswordAndRoundTrips() throws {
        let url = try AMQPURL(parsing: "amqp://referrald:hunter2@127.0.0.1/%2f")
        #expect(url.description == "amqp://referrald:***@127.0.0.1:5672/%2F")
        #expect(!url.description.contains("hunter2"))
        #expect(!"\(url)".contains("hunter2"))
        let reparsed = try AMQPURL(parsing: url.description)
        #expect(reparsed.vhost == url.vhost)
        #expect(reparsed.host == url.host)
    }

    @Test(arguments: [
        "http://u:p@h/v",
        "amqp:/h",
        "amqp://u:p@/v",
        "amqp://u:p@h:0/v",
        "amqp://u:p@h:99999/v",
        "amqp://u:p@h:port/v",
        "amqp://u:p@h/a/b",
        "amqp://u:p@h/%zz",
        "amqp://u:p@h/v?heartbeat=5",
        "amqp://u:p@[::1/v",
    ])
    func rejectsBadURLs(text: String) {
        #expect {
            try AMQPURL(parsing: text)
        } throws: { error in
            (error as? AMQPError)?.code == .invalidURL
        }
    }

    /// An unencoded '/' or '?' in the password once put the rest of it in the host, port or vhost
    /// (`amqp://u:5672/secret@h`: host "u", vhost "secret@h"), from where it reached error text.
    @Test(arguments: [
        "amqp://u:pa/topsecret@broker/v",
        "amqp://u:5672/topsecret@broker",
        "amqp://u:pa?topsecret@broker/v",
        "amqps://u:pa/top?secret@broker:5671/v",
        "amqp://u/topsecret:pw@broker/v",
    ])
    func refusesAnUnencodedSlashOrQuestionMarkInTheUserinfo(text: String) {
        do {
            let url = try AMQPURL(parsing: text)
            Issue.record("accepted, host \(url.host), vhost \(url.vhost)")
        } catch {
            #expect(error.code == .invalidURL)
            #expect("\(error)".contains("%2F"))
            #expect(!"\(error)".contains("secret"))
        }
    }

    @Test func anEncodedSlashAndQuestionMarkInThePasswordParse() throws {
        let url = try AMQPURL(parsing: "amqp://u:pa%2Fs%3Fs@broker/v%40x")
        #expect(url.password == "pa/s?s")
        #expect(url.host == "broker")
        #expect(url.vhost == "v@x")
    }

    @Test func errorsNeverEchoThePassword() {
        do {
            _ = try AMQPURL(parsing: "amqp://u:topsecret@h:notaport/v")
            Issue.record("expected a parse error")
        } catch {
            #expect(error.code == .invalidURL)
            #expect(!"\(error)".contains("topsecret"))
        }
    }
}
