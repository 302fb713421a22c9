import Foundation

/// Runs a program to completion on a thread of its own and resumes the caller when it exits.
///
/// `Process.waitUntilExit()` and reading a pipe to its end block the calling thread. Called
/// from a test, that thread belongs to the cooperative pool — two threads on these machines — and
/// a few rabbitmqctl or chromium runs (seconds each) stalled every other test running in
/// parallel: a TLS failure that takes milliseconds was measured at 15 s that way.
enum Subprocess {
    struct Result: Sendable {
        let status: Int32
        let stdout: Data
        let stderr: Data
        var output: String { String(decoding: stdout, as: UTF8.self) }
        var errors: String { String(decoding: stderr, as: UTF8.self) }
    }

    static func run(
        _ executable: URL, _ arguments: [String], environment: [String: String]? = nil,
        input: Data? = nil
    ) async throws -> Result {
        try await withCheckedThrowingContinuation { continuation in
            Thread {
                do {
                    let process = Process()
                    process.executableURL = executable
                    process.arguments = arguments
                    if let environment { process.environment = environment }
                    let stdin = Pipe()
                    let stdout = Pipe()
                    let stderr = Pipe()
                    process.standardInput = input == nil ? FileHandle.nullDevice : stdin
                    process.standardOutput = stdout
                    process.standardError = stderr
                    try process.run()
                    if let input {
                        stdin.fileHandleForWriting.write(input)
                        try stdin.fileHandleForWriting.close()
                    }
                    // stderr is drained on another thread: a child that fills one pipe while we
                    // wait on the other would otherwise block both of us for ever.
                    let errors = ErrorsReader(stderr.fileHandleForReading)
                    let out = stdout.fileHandleForReading.readDataToEndOfFile()
                    process.waitUntilExit()
                    continuation.resume(
                        returning: Result(status: process.terminationStatus, stdout: out, stderr: errors.wait()))
                } catch {
                    continuation.resume(throwing: error)
                }
            }.start()
        }
    }

    /// Reads a pipe to its end on its own thread. `@unchecked Sendable`: `data` is written once by
    /// the reader thread before it signals `done`, and read only after waiting on `done`.
    private final class ErrorsReader: @unchecked Sendable {
        private var data = Data()
        private let done = DispatchSemaphore(value: 0)

        init(_ handle: FileHandle) {
            Thread { [self] in
                data = handle.readDataToEndOfFile()
                done.signal()
            }.start()
        }

        func wait() -> Data {
            done.wait()
            return data
        }
    }
}
