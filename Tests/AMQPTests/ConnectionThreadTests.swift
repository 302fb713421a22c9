import Logging
import Synchronization
import Testing

@testable import AMQP

/// The hand-off between callers and the connection thread, without a broker or a started thread.
@Suite("ConnectionThread hand-off (no broker)")
struct ConnectionThreadTests {
    /// Acks reach the broker in the order their jobs were submitted: the thread takes the queued
    /// jobs first in first out and runs each to its end (an ack is written before the job
    /// returns). A reordering here is what turns a `multiple` ack and a single ack into a
    /// 406 unknown delivery tag.
    @Test func jobsRunInTheOrderTheyWereSubmitted() throws {
        let thread = try ConnectionThread()
        let core = ConnectionCore(loop: thread, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        let ran = Mutex<[Int]>([])
        for index in 0..<100 {
            #expect(thread.submit { _ in ran.withLock { $0.append(index) } })
        }
        for job in thread.takeJobs() { job(core) }
        #expect(ran.withLock { $0 } == Array(0..<100))
        #expect(thread.takeJobs().isEmpty)
    }

    /// Once stopped, the thread refuses jobs (the caller fails its own request) and hands back
    /// the ones still queued, so that none is left suspended.
    @Test func aStoppedThreadRefusesJobsAndReturnsTheQueuedOnes() throws {
        let thread = try ConnectionThread()
        #expect(thread.submit { _ in })
        #expect(thread.stop().count == 1)
        #expect(!thread.submit { _ in })
    }

    @Test func waiterIDsIncrease() throws {
        let thread = try ConnectionThread()
        let first = thread.nextWaiterID()
        #expect(thread.nextWaiterID() == first + 1)
    }
}
