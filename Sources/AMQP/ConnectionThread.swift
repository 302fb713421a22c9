import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The hand-off point between callers (any task, any thread) and the one OS thread that owns a
/// librabbitmq connection. Callers append jobs and poke a pipe; the thread takes jobs between
/// its socket polls. The pipe lets the thread sleep in `poll()` on the broker's socket *and*
/// wake at once for a job: without it a job would wait for the poll timeout (up to the
/// `ConnectionCore.tick`), a delay added to every ack.
///
/// `@unchecked Sendable`: `jobs`, `stopped`, `open` and `lastWaiterID` are only touched under `lock`; the two
/// pipe descriptors are immutable, and read(2)/write(2)/poll(2) on them are thread-safe.
final class ConnectionThread: @unchecked Sendable {
    typealias Job = @Sendable (ConnectionCore) -> Void

    private let lock = NSLock()
    private var jobs: [Job] = []
    private var stopped = false
    private var open = false
    private var lastWaiterID: UInt64 = 0
    let wakeReadFD: Int32
    let wakeWriteFD: Int32

    init() throws(AMQPError) {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else {
            throw AMQPError(
                .connectFailed, operation: "create wake-up pipe", detail: "pipe() failed, errno \(errno)")
        }
        // Non-blocking both ways: a full pipe must not block a caller (the thread is awake
        // anyway), and draining it must stop at empty instead of blocking the thread.
        for fd in fds { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK) }
        wakeReadFD = fds[0]
        wakeWriteFD = fds[1]
    }

    deinit {
        close(wakeReadFD)
        close(wakeWriteFD)
    }

    /// Starts the OS thread. The core is created on it, so the C handle is born, used and freed
    /// on that one thread.
    func start(name: String, makeCore: @escaping @Sendable (ConnectionThread) -> ConnectionCore) {
        let thread = Thread { [self] in
            makeCore(self).run()
        }
        thread.name = name
        thread.start()
    }

    /// Queues a job for the connection thread. False once the thread has stopped: the caller
    /// must then fail its own request.
    func submit(_ job: @escaping Job) -> Bool {
        lock.lock()
        guard !stopped else {
            lock.unlock()
            return false
        }
        jobs.append(job)
        lock.unlock()
        wake()
        return true
    }

    func takeJobs() -> [Job] {
        lock.lock()
        defer { lock.unlock() }
        let taken = jobs
        jobs.removeAll()
        return taken
    }

    /// Refuses further jobs and returns the ones still queued, which the thread runs (they fail
    /// with the connection's final error) so that no caller is left suspended forever.
    func stop() -> [Job] {
        lock.lock()
        defer { lock.unlock() }
        stopped = true
        let taken = jobs
        jobs.removeAll()
        return taken
    }

    var isOpen: Bool {
        get {
            lock.lock()
            defer { lock.unlock() }
            return open
        }
        set {
            lock.lock()
            open = newValue
            lock.unlock()
        }
    }

    /// Ids for `nextDeliveries` calls, so that a cancelled call can be found on the thread.
    func nextWaiterID() -> UInt64 {
        lock.lock()
        defer { lock.unlock() }
        lastWaiterID += 1
        return lastWaiterID
    }

    func wake() {
        var byte: UInt8 = 1
        // EAGAIN means the pipe already holds wake-ups: the thread will wake, nothing is lost.
        _ = write(wakeWriteFD, &byte, 1)
    }

    func drainWakeups() {
        var buffer = [UInt8](repeating: 0, count: 64)
        while read(wakeReadFD, &buffer, buffer.count) > 0 {}
    }
}
