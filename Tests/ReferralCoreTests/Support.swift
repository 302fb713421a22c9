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
    return FileManager.default.fileExists(atPath: dir.appendingPathComponent("examples/invalid/manifest.json").path)
        ? dir : nil
}()

let contractAvailable = contractDir != nil

/// A detail as the contract allows it: one line of printable ASCII, at most 1,024 characters.
func isHeaderSafe(_ detail: String) -> Bool {
    !detail.isEmpty && detail.utf8.count <= 1024 && detail.utf8.allSatisfy { (0x20...0x7E).contains($0) }
}
