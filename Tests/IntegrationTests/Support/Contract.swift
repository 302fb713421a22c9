import Foundation
import Testing

/// The shared event contract beside the checkout (CI has it). Tests that read it are skipped,
/// saying so, where it is absent.
enum Contract {
    static let directory = TestServices.contractDirectory
    static let available = directory != nil
    static let skipNote: Comment = "../shared/contract not found: contract conformance test SKIPPED"

    static func example(_ path: String) throws -> [UInt8] {
        guard let directory else { throw ContractMissing() }
        return Array(try Data(contentsOf: directory.appendingPathComponent("examples/" + path)))
    }

    static func invalidManifest() throws -> [String: String] {
        guard let directory else { throw ContractMissing() }
        let data = try Data(contentsOf: directory.appendingPathComponent("examples/invalid/manifest.json"))
        return try JSONDecoder().decode([String: String].self, from: data)
    }

    /// Validates a published body against the contract's schema for its type, with the
    /// project's validator script (python-jsonschema, format assertion on). Returns the first
    /// error, or nil when valid.
    static func schemaError(of body: [UInt8], type: String) async throws -> String? {
        guard let directory else { throw ContractMissing() }
        let result = try await Subprocess.run(
            URL(fileURLWithPath: "/usr/bin/env"),
            [
                "python3", TestServices.packageRoot.appendingPathComponent("scripts/validate-event.py").path,
                directory.appendingPathComponent("schemas/\(type).json").path,
            ],
            input: Data(body))
        if result.status == 0 { return nil }
        return result.output.isEmpty ? "validator exited \(result.status): \(result.errors)" : result.output
    }

    static func printSkipOnce() {
        if !available { print("SKIPPED: contract conformance (no ../shared/contract)") }
    }
}

struct ContractMissing: Error {}
