import Foundation
import Prometheus

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// What `/metrics` serves beyond the registry's own text: a `# HELP` line for every metric (the
/// swift-metrics bridge gives none, and an SRE reading a dashboard at 3 a.m. should not need
/// the source to know what a series means), the build, and the process's memory, CPU and file
/// descriptors, read from `/proc` at scrape time.
enum Exposition {
    /// One line per metric the daemon exports, by name.
    static let help: [String: String] = [
        "referrald_batch_seconds": "Time to apply one batch: classify, one transaction, publish and ack.",
        "referrald_batch_size": "Deliveries per batch.",
        "referrald_connection_up": "1 while the connection to the peer (amqp, postgres) is up.",
        "referrald_dead_letters_total": "Messages dead-lettered, by the contract's error code.",
        "referrald_dead_letters_parked_total":
            "Dead letters the broker refused (DLQ missing, unbound or full), parked in the parked queue instead, by error code.",
        "referrald_end_to_end_seconds": "From an event's own time to its ack: queueing included.",
        "referrald_events_consumed_total":
            "Events consumed, by type and outcome (applied, duplicate, dead_lettered, failed).",
        "referrald_leads_unattributed_total":
            "Leads that became no referral, by reason (missing_code, malformed_code, unknown_code).",
        "referrald_lock_conflicts_total": "Batches rolled back by a deadlock or serialisation failure and retried.",
        "referrald_asks_held_settled_total":
            "Asks a budget held, once their freshness ended: sent after the hold lifted, or dropped stale while held, by program.",
        "referrald_asks_held_total":
            "Asks a program's monthly budget held instead of sending, each counted once, by program.",
        "referrald_budget_committed_minor":
            "The program's commitment for the current UTC month: rewards issued or in their hold by milestone month, less reversals (the same on every instance).",
        "referrald_budget_limit_minor": "The program's monthly budget (budget.monthly_minor).",
        "referrald_loop_iterations_total": "Passes of the consume loop: it stops rising when a pipeline is wedged.",
        "referrald_outbox_backlog": "Outbox rows not yet published.",
        "referrald_outbox_oldest_age_seconds": "Age of the oldest unpublished outbox row.",
        "referrald_parked_messages":
            "Messages waiting in the parked queue for the dead-letter exchange to accept them again.",
        "referrald_reconnects_total": "Reconnections, by peer.",
        "referrald_referrals_rejected_total":
            "Referrals rejected, by the rule's reason (fraud rules, limits, competition).",
        "referrald_reward_failures_total": "Billing rejections of issued rewards, by program.",
        "referrald_reward_unapplied_oldest_age_seconds":
            "How long ago the oldest reward billing has not applied was first issued (the same on every instance).",
        "referrald_rewards_issued_amount_minor_total":
            "Amount of rewards issued, in minor units, by program and currency.",
        "referrald_rewards_issued_total": "Rewards issued, by program.",
        "referrald_rewards_reversed_amount_minor_total":
            "Amount of rewards reversed, in minor units, by program and currency.",
        "referrald_rewards_reversed_total": "Rewards reversed, by program.",
        "referrald_rewards_paused_seconds":
            "How long an operator has paused the program's rewards (program=\"*\": every program); 0 when not paused (the same on every instance).",
        "referrald_rewards_unapplied": "Rewards issued that billing has not applied yet (the same on every instance).",
        "referrald_start_time_seconds": "When this process started, in seconds since the epoch.",
        "referrald_timer_lag_seconds": "How late the oldest due referral timer is.",
        "referrald_timers_due": "Referral timers due now.",
        "referrald_watchdog_pings_withheld_total":
            "systemd watchdog pings withheld because the consume loop made no progress in the interval.",
    ]

    static func render(_ registry: PrometheusCollectorRegistry) -> [UInt8] {
        var out = ""
        for line in String(decoding: registry.emitToBuffer(), as: UTF8.self).split(separator: "\n") {
            if line.hasPrefix("# TYPE ") {
                let name = String(line.split(separator: " ")[2])
                if let text = help[name] { out += "# HELP \(name) \(text)\n" }
            }
            out += line + "\n"
        }
        out += "# HELP referrald_build_info The running build: always 1, the version is the label.\n"
        out += "# TYPE referrald_build_info gauge\n"
        out += "referrald_build_info{version=\"\(BuildInfo.version)\"} 1\n"
        let process = ProcessReading.now()
        if let rss = process.residentBytes {
            out +=
                "# HELP process_resident_memory_bytes Resident memory of this process (compare with the unit's MemoryMax).\n"
            out += "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes \(rss)\n"
        }
        if let cpu = process.cpuSeconds {
            out += "# HELP process_cpu_seconds_total CPU time of this process, user and system.\n"
            out += "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total \(cpu)\n"
        }
        if let fds = process.openFiles {
            out +=
                "# HELP process_open_fds Open file descriptors of this process (the unit's LimitNOFILE bounds them).\n"
            out += "# TYPE process_open_fds gauge\nprocess_open_fds \(fds)\n"
        }
        return Array(out.utf8)
    }
}

/// The process's own figures from `/proc/self` (Linux; nil elsewhere).
struct ProcessReading {
    var residentBytes: Int64?
    var cpuSeconds: Double?
    var openFiles: Int?

    static func now() -> ProcessReading {
        var r = ProcessReading()
        let page = Int64(sysconf(Int32(_SC_PAGESIZE)))
        if let statm = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
            let pages = statm.split(separator: " ").dropFirst().first.flatMap({ Int64($0) })
        {
            r.residentBytes = pages * page
        }
        // Fields 14 and 15 (utime, stime) in clock ticks, counted after the command name, which
        // is in parentheses and may hold spaces.
        if let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        {
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
            if fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]), ticks > 0 {
                r.cpuSeconds = (user + system) / ticks
            }
        }
        r.openFiles = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.count
        return r
    }
}
