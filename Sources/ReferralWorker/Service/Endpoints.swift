import Logging
import Prometheus
import ServiceLifecycle

/// `/healthz`, `/readyz` and `/metrics` as a service of the group: listening from start until
/// the worker has drained (it is shut down after the worker), so a scrape during the drain
/// still answers and `/readyz` says `draining`.
struct HTTPService: Service {
    let host: String
    let port: Int
    let status: ServiceStatus
    /// How long a pipeline's loop may stand still before `/healthz` fails (REFERRALD_HEALTH_STALL_SECONDS).
    let stallWindow: Duration
    let registry: PrometheusCollectorRegistry
    let logger: Logger

    func run() async throws {
        let status = self.status
        let registry = self.registry
        let window = stallWindow
        let server = try HTTPServer.start(host: host, port: port, logger: logger) { method, path in
            Self.respond(method: method, path: path, status: status, stallWindow: window, registry: registry)
        }
        logger.info("http endpoint listening", metadata: ["http.host": "\(host)", "http.port": "\(server.port)"])
        defer { server.stop() }
        // Returns on graceful shutdown, throws on cancellation: either way the server stops.
        try? await gracefulShutdown()
    }

    static func respond(
        method: String, path: String, status: ServiceStatus, stallWindow: Duration,
        registry: PrometheusCollectorRegistry, now: ContinuousClock.Instant = .now
    ) -> HTTPServer.Response {
        guard ["/healthz", "/readyz", "/metrics"].contains(path) else { return .text(404, "Not Found", "not found") }
        guard method == "GET" else {
            var r = HTTPServer.Response.text(405, "Method Not Allowed", "only GET")
            r.headers = [("Allow", "GET")]
            return r
        }
        switch path {
        case "/healthz":
            if let reason = status.notLiveReason(within: stallWindow, now: now) {
                return .text(503, "Service Unavailable", reason)
            }
            return .text(200, "OK", "ok")
        case "/readyz":
            if let reason = status.notReadyReason() { return .text(503, "Service Unavailable", reason) }
            return .text(200, "OK", "ready")
        default:
            return HTTPServer.Response(
                status: 200, reason: "OK", contentType: "text/plain; version=0.0.4; charset=utf-8",
                body: Exposition.render(registry))
        }
    }
}
