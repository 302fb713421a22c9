import Foundation
import Testing
@testable import ReferralCore

/// This target's own fixtures (`Fixtures/`, copied as a resource folder).
enum Fixtures {
    static let root = Bundle.module.resourceURL!.appendingPathComponent("Fixtures")

    static func bytes(_ relativePath: String) throws -> [UInt8] {
        Array(try Data(contentsOf: root.appendingPathComponent(relativePath)))
    }

    static func consumed(_ type: ConsumedType) throws -> [UInt8] { try bytes("consumed/\(type.rawValue).json") }

    /// `invalid/manifest.json`: file name -> expected code and the field its detail must name.
    static func invalidManifest() throws -> [(name: String, code: String, field: String?)] {
        let object = try #require(try JSONValue.parse(bytes("invalid/manifest.json")).objectValue)
        return try object.members.map { m in
            let entry = try #require(m.value.objectValue)
            return (m.key, try #require(entry["code"]?.stringValue), entry["field"]?.stringValue)
        }
    }
}

/// The shared contract folder: `$REFERRALD_CONTRACT_DIR`, else `../shared/contract` next to the
/// package root (found from this file's path). Nil when absent, and the conformance suite skips.
let contractDir: URL? = {
    let fromEnv = ProcessInfo.processInfo.environment["REFERRALD_CONTRACT_DIR"].map { URL(fileURLWithPath: $0) }
    let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    let dir = (fromEnv ?? packageRoot.appendingPathComponent("../shared/contract")).standardizedFileURL
    return FileManager.default.fileExists(atPath: dir.appendingPathComponent("examples/invalid/manifest.json").path) ? dir : nil
}()

let contractAvailable = contractDir != nil

/// SplitMix64: a tiny seeded generator, so a failing generated run can be replayed exactly.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A detail as the contract allows it: one line of printable ASCII, at most 1,024 characters.
func isHeaderSafe(_ detail: String) -> Bool {
    !detail.isEmpty && detail.utf8.count <= 1024 && detail.utf8.allSatisfy { (0x20...0x7E).contains($0) }
}
