/// What this binary is, for `referrald --version` and the start-up log line.
public enum BuildInfo {
    /// Raised with every landed release that changes the schema or the contract's use.
    public static let version = "0.15.0"
}
