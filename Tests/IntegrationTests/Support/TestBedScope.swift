import Foundation
import Synchronization
import Testing

/// Tears down every `TestBed` a test made, with the workers and daemons it started, when the
/// test ends whichever way it ends. A teardown written at the end of the test body was skipped
/// by a failing `#require` (it throws out of the middle): the worker kept consuming, the
/// daemon kept running, and the database stayed behind for the rest of the run.
///
/// Swift has no `await` in `defer`; this trait is the scope that plays its part. Every suite
/// that makes a bed carries it, and `TestBed.make()` refuses to run outside it.
struct TearsDownTestBeds: SuiteTrait, TestTrait, TestScoping {
    var isRecursive: Bool { true }

    func provideScope(
        for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void
    ) async throws {
        let beds = BedsOfTest()
        do {
            try await BedsOfTest.$current.withValue(beds) { try await function() }
        } catch {
            await beds.tearDown()
            throw error
        }
        await beds.tearDown()
    }
}

extension Trait where Self == TearsDownTestBeds {
    static var tearsDownTestBeds: Self { Self() }
}

/// The beds one test made, in the order it made them.
final class BedsOfTest: Sendable {
    @TaskLocal static var current: BedsOfTest?

    private let beds = Mutex<[TestBed]>([])

    func add(_ bed: TestBed) { beds.withLock { $0.append(bed) } }

    /// Last made, first torn down; each bed once, as the list is emptied first.
    func tearDown() async {
        let all = beds.withLock { beds in
            defer { beds = [] }
            return beds
        }
        for bed in all.reversed() { await bed.tearDown() }
    }
}

struct TestBedOutsideScope: Error, CustomStringConvertible {
    var description: String {
        "TestBed.make() needs the suite's .tearsDownTestBeds trait, which tears it down however the test ends"
    }
}
