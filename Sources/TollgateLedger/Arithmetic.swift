/// Arithmetic on credits that cannot trap, for the paths that run from stored state and from
/// time (`advance(to:)`, which recovery runs too): there a trap would crash-loop the server.
/// Commands check their amounts first (`creditsMax`, seats × credits per seat), so these
/// saturate only on a state that slipped past a check.
extension Credits {
    /// `a × b`, or `Credits.max` (`.min`) where the product does not fit.
    static func product(_ a: Credits, _ b: Credits) -> Credits {
        let (value, overflow) = a.multipliedReportingOverflow(by: b)
        guard overflow else { return value }
        return (a < 0) == (b < 0) ? .max : .min
    }

    /// `percent`% of `amount`, rounded toward zero, for `percent` in 0...100 (alert rules are
    /// checked to be) and any `amount`: computed in double width, so it never overflows.
    static func percent(_ percent: Credits, of amount: Credits) -> Credits {
        let clamped = Swift.min(Swift.max(percent, 0), 100)
        return Credits(100).dividingFullWidth(amount.multipliedFullWidth(by: clamped)).quotient
    }
}
