import Foundation
import Histogram

/// One drained backlog.
struct DrainResult {
    var messages: Int
    var seconds: Double
    var usage: CPUWindow.Usage
    var peakRSSKiB: Int64?
    /// Drain rates of the first and the last 10 % of the backlog (from the inbox's depth):
    /// whether throughput holds as the tables grow.
    var firstTenth: Double?
    var lastTenth: Double?

    var eventsPerSecond: Double { Double(messages) / seconds }

    func line(_ label: String) -> String {
        let rss = peakRSSKiB.map { String(format: "%.1f MiB", Double($0) / 1024) } ?? "-"
        var out = String(
            format:
                "%@: %d messages in %.2f s = %.0f events/s; peak RSS %@; CPU (cores) process %.2f, rabbitmq %.2f, postgres %.2f, machine busy %.0f %%",
            label, messages, seconds, eventsPerSecond, rss, usage.process, usage.services["beam.smp"] ?? 0,
            usage.services["postgres"] ?? 0, usage.machineBusy * 100)
        if let firstTenth, let lastTenth {
            out += String(
                format: "; first 10 %% %.0f/s, last 10 %% %.0f/s (last / first %.2f)", firstTenth, lastTenth,
                lastTenth / firstTenth)
        }
        return out
    }
}

struct LatencyResult {
    var rate: Double
    var warmupSeconds: Double
    var published: Int
    var expected: Int
    var histogram: Histogram<UInt64>
    var usage: CPUWindow.Usage
    var peakRSSKiB: Int64?

    func ms(_ p: Double) -> Double { Double(histogram.valueAtPercentile(p)) / 1000 }

    var line: String {
        String(
            format:
                "latency at %.0f events/s after %.0f s of warm-up (%d published, %d of %d expected downstream events matched): p50 %.1f ms, p99 %.1f ms, p99.9 %.1f ms, max %.1f ms; CPU (cores) daemon %.2f, rabbitmq %.2f, postgres %.2f; peak RSS %.1f MiB",
            rate, warmupSeconds, published, Int(histogram.totalCount), expected, ms(50), ms(99), ms(99.9),
            Double(histogram.max) / 1000,
            usage.process, usage.services["beam.smp"] ?? 0, usage.services["postgres"] ?? 0,
            Double(peakRSSKiB ?? 0) / 1024)
    }
}

struct Report {
    var ceiling: DrainResult?
    var mix: DrainResult?
    var batch1: DrainResult?
    var latency: LatencyResult?
    var hot: DrainResult?
    var hotBackfillSeconds: Double?

    func table(batchSize: Int) -> String {
        var rows = ["| measure | value |", "|---|---|"]
        func f(_ v: Double) -> String { String(format: "%.0f", v) }
        if let mix { rows.append("| realistic mix, batch \(batchSize) (events/s) | \(f(mix.eventsPerSecond)) |") }
        if let ceiling { rows.append("| ceiling: inbox-only transaction (events/s) | \(f(ceiling.eventsPerSecond)) |") }
        if let batch1 { rows.append("| realistic mix, batch 1 (events/s) | \(f(batch1.eventsPerSecond)) |") }
        if let mix, let ceiling {
            rows.append(String(format: "| mix / ceiling | %.2f |", mix.eventsPerSecond / ceiling.eventsPerSecond))
        }
        if let mix, let batch1 {
            rows.append(String(format: "| mix / batch 1 | %.1f |", mix.eventsPerSecond / batch1.eventsPerSecond))
        }
        if let hot { rows.append("| hot mix (events/s) | \(f(hot.eventsPerSecond)) |") }
        if let mix, let hot {
            rows.append(String(format: "| hot mix / mix | %.2f |", hot.eventsPerSecond / mix.eventsPerSecond))
        }
        if let latency {
            rows.append(
                String(
                    format:
                        "| latency at %.0f events/s (after %.0f s of warm-up): p50 / p99 / p99.9 (ms) | %.1f / %.1f / %.1f |",
                    latency.rate, latency.warmupSeconds, latency.ms(50), latency.ms(99), latency.ms(99.9)))
        }
        if let rss = mix?.peakRSSKiB {
            rows.append(String(format: "| peak RSS draining the backlog | %.1f MiB |", Double(rss) / 1024))
        }
        if let mix {
            rows.append(
                String(
                    format:
                        "| CPU while draining (cores): daemon / rabbitmq / postgres / machine busy | %.2f / %.2f / %.2f / %.0f %% |",
                    mix.usage.process, mix.usage.services["beam.smp"] ?? 0, mix.usage.services["postgres"] ?? 0,
                    mix.usage.machineBusy * 100))
        }
        return rows.joined(separator: "\n")
    }
}
