import CLibPQ
import Foundation

/// A serial executor that runs every job on one dedicated OS thread.
///
/// libpq calls block (network round trips, `pg_sleep`, lock waits). Run on the cooperative
/// pool, which has only two threads on these machines, one slow query would stall every other
/// task of the daemon. A `PGconn` is also not thread-safe, so it must never be used from two
/// threads at once. Giving each connection actor this executor solves both: the blocking happens
/// on a thread nobody else needs, and the actor's serial execution keeps the handle on it.
///
/// `@unchecked Sendable`: the only mutable state, `jobs` and `stopping`, is read and written
/// with `condition` locked.
final class ThreadExecutor: SerialExecutor, @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [UnownedJob] = []
    private var stopping = false

    init(name: String) {
        // The thread keeps the executor alive until `shutdown()` lets its loop end, so the
        // actor's isolated deinit, itself a job on this executor, can still run.
        let thread = Thread { [self] in
            // Named through pthreads from inside the thread: swift-corelibs-foundation's
            // `Thread.name` does not reliably reach the OS thread, which then keeps the name it
            // inherited from the pool thread that created it ("oot.default-qos" in `top -H`).
            _ = referrald_pq_name_current_thread(name)
            self.runLoop()
        }
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    func asUnownedSerialExecutor() -> UnownedSerialExecutor {
        UnownedSerialExecutor(ordinary: self)
    }

    /// Lets the thread exit once the queue is empty. Jobs already queued still run.
    func shutdown() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func runLoop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let batch = jobs
            jobs.removeAll(keepingCapacity: true)
            condition.unlock()
            for job in batch { job.runSynchronously(on: asUnownedSerialExecutor()) }
        }
    }
}
