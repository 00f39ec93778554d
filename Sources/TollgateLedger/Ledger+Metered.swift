/// Metered products, priced by dimension: an LLM call is priced by its input, output and cached
/// tokens, each at its own rate, per model (a model is a product).
///
/// SET_METERED_RATE gives a product's dimension a versioned rate: `credits` per `per` units,
/// where `per` is 1, 1,000 or 1,000,000. A metered request names a quantity for each dimension it
/// uses; its cost is the sum over them of `quantity × credits / per`, rounded up once to a whole
/// credit, so the gate never charges less than the rates say and at most one credit more. A
/// RESERVE_METERED holds the cost of an estimate (or of the worst case) and remembers the rates
/// in force then; COMMIT_METERED prices the actual quantities at those rates — a rate change
/// between the two does not touch a hold already made — and commits that many credits as a
/// COMMIT of credits would (the rest returned on a final commit, an excess drawn under the caps
/// and the overage policy). A dimension the hold was not priced for is refused.
///
/// The rates and the holds' remembered rates are kept apart from the per-unit rate card and the
/// hold records, so a decision that uses neither pays nothing for them.

/// A quantity of one dimension of a metered product ("input" tokens: 1,200).
public struct DimensionQuantity: Hashable, Sendable {
    public var dimension: String
    public var quantity: Int64

    public init(_ dimension: String, _ quantity: Int64) {
        self.dimension = dimension
        self.quantity = quantity
    }
}

/// A request for a metered product: its dimensions' quantities instead of a quantity of units.
public struct MeteredRequest: Hashable, Sendable {
    public var account: String
    public var member: String?
    public var product: String
    public var dimensions: [DimensionQuantity]

    public init(account: String, member: String?, product: String, dimensions: [DimensionQuantity]) {
        self.account = account
        self.member = member
        self.product = product
        self.dimensions = dimensions
    }
}

/// A dimension's rate: `credits` per `per` units.
public struct MeteredRate: Hashable, Sendable {
    public var credits: Credits
    public var per: Int64

    public init(credits: Credits, per: Int64) {
        self.credits = credits
        self.per = per
    }

    /// The units a rate may be per.
    public static let pers: [Int64] = [1, 1_000, 1_000_000]
}

/// A dimension's rate over time, as `RateHistory` is a product's.
typealias MeteredHistory = VersionHistory<MeteredRate>

/// A dimension as a hold was priced: its name and the rate then.
struct PricedDimension: Hashable, Sendable {
    var dimension: String
    var rate: MeteredRate
}

/// A metered product's rates as reads show them.
public struct MeteredRateView: Hashable, Sendable {
    public var product: String
    public var dimension: String
    /// Nil before the first version takes effect.
    public var rate: MeteredRate?
    public var upcoming: [(effectiveAt: Instant, rate: MeteredRate)]

    public static func == (a: MeteredRateView, b: MeteredRateView) -> Bool {
        a.product == b.product && a.dimension == b.dimension && a.rate == b.rate && a.upcoming.map(\.effectiveAt) == b.upcoming.map(\.effectiveAt)
            && a.upcoming.map(\.rate) == b.upcoming.map(\.rate)
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(product)
        hasher.combine(dimension)
    }
}

extension Ledger {
    /// Dimensions a metered product, and a request, may have.
    static let dimensionsMax = 16

    // MARK: - The rate card

    mutating func setMeteredRate(_ product: String, dimension: String, rate: MeteredRate, effectiveAt: Instant, at now: Instant) -> Answer {
        if let error = validateIdentifier(product, "product") { return refused(error) }
        if let error = validateIdentifier(dimension, "dimension") { return refused(error) }
        if let error = validateCredits(rate.credits, "rate", allowZero: true) { return refused(error) }
        guard MeteredRate.pers.contains(rate.per) else {
            return refused(LedgerError(.invalidArgument, level: .request, subject: "a metered rate is per 1, 1000 or 1000000 units"))
        }
        let key = HashedString(product)
        var dimensions = meteredRates[key] ?? [:]
        guard dimensions[dimension] != nil || dimensions.count < Self.dimensionsMax else {
            return refused(LedgerError(.limitReached, level: .request, subject: "dimensions per product"))
        }
        guard meteredRates[key] != nil || meteredRates.count < limits.productsMax else {
            return refused(LedgerError(.limitReached, level: .ledger, subject: "metered products"))
        }
        var history = dimensions[dimension] ?? MeteredHistory()
        guard history.versions.count < limits.rateVersionsPerProductMax || history.versions.contains(where: { $0.effectiveAt == max(effectiveAt, now) }) else {
            return refused(LedgerError(.limitReached, level: .request, subject: "rate versions per dimension"))
        }
        history.set(rate, from: max(effectiveAt, now), now: now)
        dimensions[dimension] = history
        meteredRates[key] = dimensions
        return .done
    }

    /// The metered rate card, by product and dimension.
    public func meteredRateCard(at instant: Instant) -> [MeteredRateView] {
        let now = max(instant, clock)
        var views: [MeteredRateView] = []
        for (product, dimensions) in meteredRates {
            for (dimension, history) in dimensions {
                views.append(
                    MeteredRateView(
                        product: product.string, dimension: dimension, rate: history.version(at: now)?.value,
                        upcoming: history.versions.filter { $0.effectiveAt > now }.map { ($0.effectiveAt, $0.value) }))
            }
        }
        return views.sorted { ($0.product, $0.dimension) < ($1.product, $1.dimension) }
    }

    // MARK: - Pricing

    /// What is wrong with a request's dimensions, or nil: 1 to 16 of them, named by
    /// identifiers, none twice, each quantity 0 to the quantity limit.
    func problem(dimensions: [DimensionQuantity], allowEmpty: Bool = false) -> LedgerError? {
        guard dimensions.count <= Self.dimensionsMax, allowEmpty || !dimensions.isEmpty else {
            return LedgerError(.invalidArgument, level: .request, subject: "a metered request names 1 to \(Self.dimensionsMax) dimensions")
        }
        for entry in dimensions {
            if let error = validateIdentifier(entry.dimension, "dimension") { return error }
            guard entry.quantity >= 0, entry.quantity <= limits.quantityMax else {
                return LedgerError(.amountOutOfRange, level: .request, subject: "dimension \(entry.dimension) quantity must be 0 to \(limits.quantityMax)")
            }
        }
        guard Set(dimensions.map(\.dimension)).count == dimensions.count else {
            return LedgerError(.invalidArgument, level: .request, subject: "a dimension is named twice")
        }
        return nil
    }

    /// `⌈Σ quantity × credits / per⌉`, or nil past the credit limit. Every `per` divides
    /// 1,000,000, so the sum is exact in millionths of a credit (in 128 bits).
    static func meteredCost(_ dimensions: [DimensionQuantity], _ rates: [PricedDimension], creditsMax: Credits) -> Credits? {
        var millionths: Int128 = 0
        for entry in dimensions {
            guard let rate = rates.first(where: { $0.dimension == entry.dimension })?.rate else { return nil }
            millionths += Int128(entry.quantity) * Int128(rate.credits) * Int128(1_000_000 / rate.per)
        }
        let credits = (millionths + 999_999) / 1_000_000
        guard credits <= Int128(creditsMax) else { return nil }
        return Credits(credits)
    }

    /// Prices a metered request at the rates in force now: the priced request and the rates of
    /// the dimensions it names.
    func priceMetered(_ request: MeteredRequest, at now: Instant) -> Result<(PricedRequest, [PricedDimension]), Refusal> {
        if let error = problem(dimensions: request.dimensions) { return .failure(Refusal(error)) }
        let chain: Chain
        switch resolveChain(account: request.account, member: request.member) {
        case .failure(let error): return .failure(Refusal(error))
        case .success(let value): chain = value
        }
        let headroom = self.headroom(chain, at: now, product: request.product)
        var rates: [PricedDimension] = []
        for entry in request.dimensions {
            guard let rate = meteredRates[HashedString(request.product)]?[entry.dimension]?.version(at: now)?.value else {
                return .failure(Refusal(LedgerError(.unknownProduct, level: .request, subject: "\(request.product) \(entry.dimension)"), headroom: headroom))
            }
            rates.append(PricedDimension(dimension: entry.dimension, rate: rate))
        }
        guard let cost = Self.meteredCost(request.dimensions, rates, creditsMax: limits.creditsMax) else {
            return .failure(Refusal(costOutOfRange(), headroom: headroom))
        }
        return .success((PricedRequest(chain: chain, creditsPerUnit: 0, cost: cost, headroom: headroom), rates))
    }

    // MARK: - Decisions

    /// CHECK_METERED: whether the request would be allowed now, holding nothing.
    public mutating func checkMetered(_ request: MeteredRequest, at instant: Instant) -> Answer {
        let now = advance(to: instant)
        switch priceMetered(request, at: now) {
        case .failure(let refusal):
            return .refused(refusal)
        case .success(let (priced, _)):
            if let error = refusalFor(priced.cost, priced.headroom, priced.chain, at: now) {
                return .refused(Refusal(error, headroom: priced.headroom))
            }
            return .decision(Decision(hold: nil, cost: priced.cost, creditsPerUnit: 0, deadline: nil, headroom: priced.headroom.after(spending: priced.cost)))
        }
    }

    mutating func reserveMetered(_ request: MeteredRequest, ttlMicroseconds ttl: Int64, at now: Instant) -> Answer {
        guard ttl > 0, ttl <= limits.holdTTLMicrosecondsMax else { return .refused(Refusal(invalidTTL())) }
        switch priceMetered(request, at: now) {
        case .failure(let refusal):
            return .refused(refusal)
        case .success(let (priced, rates)):
            let answer = holdPriced(priced, product: request.product, quantity: 0, ttl: ttl, at: now)
            if case .decision(let decision) = answer, let id = decision.hold {
                holdRates[id] = rates
                rulesInUse.value = true
            }
            return answer
        }
    }

    mutating func spendMetered(_ request: MeteredRequest, at now: Instant) -> Answer {
        switch priceMetered(request, at: now) {
        case .failure(let refusal): return .refused(refusal)
        case .success(let (priced, _)): return spendPriced(priced, product: request.product, at: now)
        }
    }

    /// COMMIT_METERED: the actual quantities, priced at the rates the hold was made at.
    mutating func commitMetered(_ hold: HoldReference, dimensions: [DimensionQuantity], isFinal: Bool, at now: Instant) -> Answer {
        if let error = problem(dimensions: dimensions, allowEmpty: true) { return .refused(Refusal(error)) }
        switch openHold(hold) {
        case .failure(let error):
            return .refused(Refusal(error))
        case .success:
            guard let rates = holdRates[hold.hold] else {
                return .refused(Refusal(LedgerError(.invalidArgument, level: .request, subject: "hold \(hold.hold) is not metered: commit it by quantity or credits")))
            }
            for entry in dimensions where !rates.contains(where: { $0.dimension == entry.dimension }) {
                return .refused(Refusal(LedgerError(.invalidArgument, level: .request, subject: "hold \(hold.hold) was not priced for dimension \(entry.dimension)")))
            }
            guard let actual = Self.meteredCost(dimensions, rates, creditsMax: limits.creditsMax) else { return .refused(Refusal(costOutOfRange())) }
            return commit(Commit(hold, amount: .credits(actual), isFinal: isFinal), at: now)
        }
    }

    /// A metered hold's remembered rates, for reads.
    public func meteredRates(ofHold id: HoldID) -> [(dimension: String, rate: MeteredRate)]? {
        holdRates[id]?.map { ($0.dimension, $0.rate) }
    }
}
