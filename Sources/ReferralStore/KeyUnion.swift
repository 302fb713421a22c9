import Postgres

/// A UNION of lookups by key arrays, built from only the branches whose keys are present.
///
/// With small batches the server plans such a statement on every call (a custom plan beats the
/// generic one it estimates for arrays of unknown length), and every branch costs planning
/// whether its array is empty or not: for a small batch, planning the fact-key lock's eight
/// branches cost more than running them. Each combination of branches is a
/// statement of its own, prepared once per connection.
struct KeyUnion {
    private(set) var branches: [String] = []
    private(set) var parameters: [PostgresValue] = []

    /// The placeholder of a new text-array parameter holding `keys`.
    mutating func parameter(_ keys: [String]) -> String {
        parameters.append(.textArray(keys))
        return "$\(parameters.count)::text[]"
    }

    /// A branch; every branch must name its columns alike, as the first present names the union's.
    mutating func add(_ branch: String) { branches.append(branch) }

    /// `UNION ALL`: the caller removes what two branches both found, cheaper than the server
    /// comparing whole rows.
    var keepsDuplicates = false

    var isEmpty: Bool { branches.isEmpty }
    var sql: String { branches.joined(separator: keepsDuplicates ? "\nUNION ALL " : "\nUNION ") }
}
