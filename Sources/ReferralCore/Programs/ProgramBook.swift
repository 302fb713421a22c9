/// The programs in force, as the programs file lists them, with the lookups decisions need.
/// Reading and validating the file is the worker's (`ProgramBook.load`): the core only holds
/// what was loaded.
public struct ProgramBook: Sendable {
    public let file: String
    public let programs: [Program]

    public init(file: String, programs: [Program]) {
        self.file = file
        self.programs = programs
    }

    public var summary: String { programs.map(\.id).joined(separator: ",") }

    /// The program for a customer of this segment; accounts without a segment fall under the
    /// first program of the file, as the operator listed it first.
    public func program(forSegment segment: String?) -> Program? {
        if let segment, let p = programs.first(where: { $0.segment.rawValue == segment }) { return p }
        return programs.first
    }
}
