import Foundation

/// CPU and memory from /proc, for the daemon and for the services it shares the two cores with.
enum Proc {
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    static func read(_ path: String) -> String? { try? String(contentsOfFile: path, encoding: .utf8) }

    /// utime + stime of a process, in clock ticks.
    static func cpuTicks(_ pid: Int32) -> Int64? {
        guard let stat = read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // After the command name: state is field 3, utime 14 and stime 15 (proc(5)).
        guard fields.count > 12, let user = Int64(fields[11]), let system = Int64(fields[12]) else { return nil }
        return user + system
    }

    /// A `Vm*:` line of /proc/<pid>/status in KiB (VmRSS now, VmHWM the peak so far).
    static func memoryKiB(_ pid: Int32, _ field: String) -> Int64? {
        guard let status = read("/proc/\(pid)/status") else { return nil }
        for line in status.split(separator: "\n") where line.hasPrefix(field + ":") {
            return Int64(line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "")
        }
        return nil
    }

    /// Processes by command name (`beam.smp` for RabbitMQ, `postgres` for PostgreSQL).
    static func pids(named name: String) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap(Int32.init).filter {
            read("/proc/\($0)/comm")?.trimmingCharacters(in: .whitespacesAndNewlines) == name
        }
    }

    /// The processes of the services the bench talks to, not of other brokers and clusters on
    /// the machine (the fault suite runs its own): the RabbitMQ node named by
    /// REFERRALD_RABBITMQ_NODE, and the postmaster of the data directory in REFERRALD_PG_CTL
    /// with its children. Without those variables, every `beam.smp` and `postgres` counts.
    static func servicePids() -> [String: [Int32]] {
        let env = ProcessInfo.processInfo.environment
        var beam = pids(named: "beam.smp")
        if let node = env["REFERRALD_RABBITMQ_NODE"] {
            beam = beam.filter {
                read("/proc/\($0)/environ")?.split(separator: "\0").contains("RABBITMQ_NODENAME=\(node)"[...]) ?? false
            }
        }
        var postgres = pids(named: "postgres")
        if let ctl = env["REFERRALD_PG_CTL"], let range = ctl.range(of: "-D ") {
            let dataDir = ctl[range.upperBound...].split(separator: " ").first.map(String.init) ?? ""
            if let line = read(dataDir + "/postmaster.pid")?.split(separator: "\n").first, let postmaster = Int32(line)
            {
                postgres = postgres.filter { $0 == postmaster || parent($0) == postmaster }
            }
        }
        return ["beam.smp": beam, "postgres": postgres]
    }

    static func parent(_ pid: Int32) -> Int32? {
        guard let stat = read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    /// Busy and total ticks of the whole machine, from the first line of /proc/stat.
    static func machineTicks() -> (busy: Int64, total: Int64) {
        guard let line = read("/proc/stat")?.split(separator: "\n").first else { return (0, 0) }
        let v = line.split(separator: " ").dropFirst().compactMap { Int64($0) }
        guard v.count >= 5 else { return (0, 0) }
        let total = v.reduce(0, +)
        return (total - v[3] - v[4], total)  // idle and iowait are not busy
    }
}

/// CPU used between `start` and `stop` by the daemon (or the bench itself), RabbitMQ,
/// PostgreSQL and the whole machine. The services are shared with other engineers' tests, so
/// their figures include whatever else ran on them meanwhile.
struct CPUWindow {
    /// The measured processes: the daemons of a phase (their CPU summed), or the bench itself.
    private var processes: [Int32]
    private var processStart: Int64 = 0
    private var servicesStart: [String: [Int32: Int64]] = [:]
    private var machineStart = (busy: Int64(0), total: Int64(0))
    private var startTime: UInt64 = 0

    init(process: Int32) { self.init(processes: [process]) }

    init(processes: [Int32]) {
        self.processes = processes
        processStart = processes.reduce(0) { $0 + (Proc.cpuTicks($1) ?? 0) }
        for (name, pids) in Proc.servicePids() {
            servicesStart[name] = Dictionary(
                uniqueKeysWithValues: pids.compactMap { pid in Proc.cpuTicks(pid).map { (pid, $0) } })
        }
        machineStart = Proc.machineTicks()
        startTime = monotonicNanos()
    }

    struct Usage {
        var seconds: Double
        /// Cores used on average (1.0 = one core busy all the time).
        var process: Double
        var services: [String: Double]
        var machineBusy: Double
    }

    func stop() -> Usage {
        let seconds = Double(monotonicNanos() - startTime) / 1e9
        func cores(_ ticks: Int64) -> Double { Double(ticks) / Proc.ticksPerSecond / seconds }
        var services: [String: Double] = [:]
        for (name, pids) in Proc.servicePids() {
            let before = servicesStart[name] ?? [:]
            // A process that started inside the window (a new backend) counts from zero.
            let ticks = pids.reduce(Int64(0)) { sum, pid in
                sum + max(0, (Proc.cpuTicks(pid) ?? 0) - (before[pid] ?? 0))
            }
            services[name] = cores(ticks)
        }
        let machine = Proc.machineTicks()
        let busy = Double(machine.busy - machineStart.busy) / Double(max(1, machine.total - machineStart.total))
        let now = processes.reduce(Int64(0)) { $0 + (Proc.cpuTicks($1) ?? 0) }
        return Usage(
            seconds: seconds, process: cores(max(0, now - processStart)),
            services: services, machineBusy: busy)
    }
}
