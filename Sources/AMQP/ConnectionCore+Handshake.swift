import CRabbitMQ

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Opening and closing: the socket (TLS for `amqps://`), login, channel 1, and the orderly close.
extension ConnectionCore {
    func connect(
        url: AMQPURL, tls: AMQPTLS?, heartbeatSeconds: Int, connectionName: String
    ) throws(AMQPError) {
        logger[metadataKey: "amqp.connection"] = "\(connectionName)"
        do {
            try open(url: url, tls: tls, heartbeatSeconds: heartbeatSeconds, connectionName: connectionName)
            loop.isOpen = true
            logger.info("connected", metadata: ["amqp.url": "\(url)"])
        } catch {
            if let conn {
                amqp_destroy_connection(conn)
                self.conn = nil
            }
            // Nothing waits yet; this makes every later call report the connect error.
            connectionLost(error)
            finished = true
            throw error
        }
    }

    private func open(url: AMQPURL, tls: AMQPTLS?, heartbeatSeconds: Int, connectionName: String) throws(AMQPError) {
        let operation = "connect to \(url)"
        func fail(_ what: String, status: Int32? = nil) -> AMQPError {
            AMQPError(
                .connectFailed, operation: operation, libraryStatus: status.map(Self.statusText), detail: what)
        }
        guard let conn = amqp_new_connection() else { throw fail("amqp_new_connection failed") }
        self.conn = conn
        let arena = CArena()

        let socket: OpaquePointer?
        if url.useTLS {
            let settings = tls ?? AMQPTLS()
            guard let ssl = amqp_ssl_socket_new(conn) else { throw fail("cannot create a TLS socket") }
            if let ca = settings.caCertificatePath {
                let status = amqp_ssl_socket_set_cacert(ssl, ca)
                guard status == AMQP_STATUS_OK.rawValue else { throw fail("cannot load CA file \(ca)", status: status) }
            }
            switch (settings.clientCertificatePath, settings.clientKeyPath) {
            case (let cert?, let key?):
                let status = amqp_ssl_socket_set_key(ssl, cert, key)
                guard status == AMQP_STATUS_OK.rawValue else {
                    throw fail("cannot load client certificate \(cert) / key \(key)", status: status)
                }
            case (nil, nil):
                break
            default:
                throw fail("a client certificate needs both clientCertificatePath and clientKeyPath")
            }
            amqp_ssl_socket_set_verify_peer(ssl, settings.verifyPeer ? 1 : 0)
            amqp_ssl_socket_set_verify_hostname(ssl, settings.verifyHostname ? 1 : 0)
            socket = ssl
        } else {
            socket = amqp_tcp_socket_new(conn)
        }
        guard let socket else { throw fail("cannot create a socket") }

        var connectTimeout = timeval(tv_sec: 10, tv_usec: 0)
        let status = amqp_socket_open_noblock(socket, url.host, Int32(url.port), &connectTimeout)
        guard status == AMQP_STATUS_OK.rawValue else {
            // Name the usual causes: librabbitmq's own text ("SSL hostname verification failed")
            // does not say which setting to look at.
            switch status {
            case AMQP_STATUS_SSL_PEER_VERIFY_FAILED.rawValue:
                throw fail(
                    "TLS: the broker's certificate is not trusted by the CA file (another CA, or expired)",
                    status: status)
            case AMQP_STATUS_SSL_HOSTNAME_VERIFY_FAILED.rawValue:
                throw fail(
                    "TLS: the broker's certificate does not name \(url.host) (a DNS name is needed: IP SANs are not matched)",
                    status: status)
            default:
                throw fail("cannot open the socket", status: status)
            }
        }

        // Without an RPC timeout a broker that accepts a declare and never answers would hold
        // the thread (and every caller queued behind it) forever.
        var rpcTimeout = timeval(tv_sec: 30, tv_usec: 0)
        _ = amqp_set_rpc_timeout(conn, &rpcTimeout)

        // librabbitmq advertises none of these by default; without them the broker silently
        // drops basic.cancel (a consumer on a deleted queue would wait forever), never sends
        // connection.blocked, and closes the socket without a reason on a bad password.
        var properties = arena.table([
            "connection_name": .string(connectionName),
            "product": .string("referrald"),
            "capabilities": .table([
                "consumer_cancel_notify": .bool(true),
                "connection.blocked": .bool(true),
                "publisher_confirms": .bool(true),
                "basic.nack": .bool(true),
                "authentication_failure_close": .bool(true),
            ]),
        ])
        let login = referrald_amqp_login_plain(
            conn, url.vhost, 0, AMQP_DEFAULT_FRAME_SIZE, Int32(heartbeatSeconds), &properties, url.user,
            url.password)
        try checkConnectReply(login, step: "login as \(url.user)", operation: operation)

        _ = amqp_channel_open(conn, Self.channel)
        try checkConnectReply(amqp_get_rpc_reply(conn), step: "channel.open", operation: operation)
    }

    private func checkConnectReply(_ reply: amqp_rpc_reply_t, step: String, operation: String) throws(AMQPError) {
        switch reply.reply_type {
        case AMQP_RESPONSE_NORMAL:
            return
        case AMQP_RESPONSE_SERVER_EXCEPTION:
            var replyCode: Int?
            var replyText: String?
            switch reply.reply.id {
            case AMQP_CONNECTION_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_connection_close_t.self).pointee
                replyCode = Int(close.reply_code)
                replyText = CDecode.string(close.reply_text)
            case AMQP_CHANNEL_CLOSE_METHOD:
                let close = reply.reply.decoded.assumingMemoryBound(to: amqp_channel_close_t.self).pointee
                replyCode = Int(close.reply_code)
                replyText = CDecode.string(close.reply_text)
            default:
                break
            }
            throw AMQPError(
                .connectFailed, operation: operation, replyCode: replyCode, replyText: replyText, detail: step)
        case AMQP_RESPONSE_LIBRARY_EXCEPTION:
            throw AMQPError(
                .connectFailed, operation: operation, libraryStatus: Self.statusText(reply.library_error),
                detail: step)
        default:
            throw AMQPError(.connectFailed, operation: operation, detail: "\(step): no reply")
        }
    }

    func close() {
        if let conn {
            // Short timeouts: closing must not hang shutdown on a dead broker.
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            _ = amqp_set_rpc_timeout(conn, &timeout)
            let channel = amqp_channel_close(conn, Self.channel, AMQP_REPLY_SUCCESS)
            if channel.reply_type == AMQP_RESPONSE_NORMAL {
                _ = amqp_connection_close(conn, AMQP_REPLY_SUCCESS)
            }
            logger.info("closed")
        }
        connectionLost(AMQPError(.closed, operation: "close", detail: "the application closed the connection"))
        finished = true
    }
}
