import Foundation
import ReferralCore
import Yams

/// The programs file, read and validated.
extension ProgramBook {
    /// Reads and validates the YAML programs file. Errors name the file, the program and the
    /// field; a YAML syntax error names the line.
    public static func load(path: String) throws -> ProgramBook {
        // The container image carries no programs file on purpose (a default one would pay real
        // rewards under example amounts): say what to do rather than show ENOENT's bare text.
        guard FileManager.default.fileExists(atPath: path) else {
            throw ProgramError(
                file: path, program: nil, field: "",
                message:
                    "no programs file here: mount one at this path (in a container: -v /etc/referrald/programs.yaml:\(path):ro) or set REFERRALD_PROGRAMS_FILE to its path"
            )
        }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ProgramError(
                file: path, program: nil, field: "", message: "cannot read the file (\(error.localizedDescription))")
        }
        return try parse(yaml: text, file: path)
    }

    public static func parse(yaml text: String, file: String) throws -> ProgramBook {
        let node: Node?
        do {
            node = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw ProgramError(file: file, program: nil, field: "", message: "not valid YAML: \(error)")
        }
        guard let node else {
            throw ProgramError(file: file, program: nil, field: "", message: "the file is empty")
        }
        return ProgramBook(file: file, programs: try loadPrograms(configNode(node), file: file))
    }
}
/// Yams' node tree to the core's neutral tree: the core validates programs without a YAML
/// dependency, and tests can build trees directly.
func configNode(_ node: Node) -> ConfigNode {
    switch node {
    case .scalar(let s): return .scalar(s.string)
    case .sequence(let seq): return .sequence(seq.map(configNode))
    case .mapping(let map):
        return .mapping(map.map { (key: $0.key.string ?? "\($0.key)", value: configNode($0.value)) })
    case .alias(let alias): return .scalar("*\(alias.anchor)")
    }
}
