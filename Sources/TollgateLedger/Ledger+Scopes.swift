/// Product-scoped grants: a grant usable only for the products it lists (for example
/// promotional credits for one feature).
///
/// A scoped grant sits in its draw order (the pool's or its member's) like any other and counts
/// in the account's balance, its alerts and its auto-recharge; a decision for a product it does
/// not cover passes over it when drawing, and leaves it out of the funds the decision may use
/// (so the headroom and `insufficientFunds` are the product's). What it lists is kept apart from
/// the grant records (`grantProducts`, by grant id), and an account counts its live scoped grants
/// (`scopedGrants`), so a decision on an account without them reads one flag and pays nothing
/// more. Credits a hold gives back, or a refund returns, go back to the grant they came from
/// whatever its products.
extension Ledger {
    /// What is wrong with a grant's list of products, or nil.
    func problem(products: [String]) -> LedgerError? {
        guard products.count <= limits.productsPerGrantMax else {
            return LedgerError(.invalidArgument, level: .request, subject: "a grant may be scoped to at most \(limits.productsPerGrantMax) products")
        }
        for product in products {
            if let error = validateIdentifier(product, "product") { return error }
        }
        guard Set(products).count == products.count else {
            return LedgerError(.invalidArgument, level: .request, subject: "a grant's products must not repeat")
        }
        return nil
    }

    /// Scopes a live grant (just created, or moved in) to `products`.
    mutating func scope(_ slot: Int32, to products: [String]) {
        let grant = Int(slot)
        grants[grant].isScoped = true
        grantProducts[grants[grant].id] = products.sorted()
        accounts[Int(grants[grant].account)].scopedGrants += 1
        rulesInUse.value = true
    }

    /// Forgets a retiring grant's products.
    mutating func unscope(_ slot: Int32) {
        let grant = Int(slot)
        grants[grant].isScoped = false
        grantProducts.removeValue(forKey: grants[grant].id)
        accounts[Int(grants[grant].account)].scopedGrants -= 1
    }

    /// Whether a scoped grant covers `product`.
    func covers(_ slot: Int32, _ product: String) -> Bool {
        grantProducts[grants[Int(slot)].id]?.contains(product) ?? true
    }

    /// Whether the chain's account or parent has scoped grants (its members' are the account's).
    @inline(__always)
    func chainHasScopedGrants(_ chain: Chain) -> Bool {
        accounts[Int(chain.account)].scopedGrants > 0 || (chain.parent != noSlot && accounts[Int(chain.parent)].scopedGrants > 0)
    }

    /// What the chain's active grants scoped to other products have available: the funds a
    /// decision for `product` may not use.
    @inline(never)
    func availableElsewhere(_ chain: Chain, _ product: String) -> Credits {
        var total: Credits = 0
        func add(_ order: [Int32]) {
            for slot in order where grants[Int(slot)].isScoped && !covers(slot, product) { total += grants[Int(slot)].available }
        }
        if chain.member != noSlot { add(members[Int(chain.member)].grantOrder) }
        add(accounts[Int(chain.account)].poolOrder)
        if chain.parent != noSlot { add(accounts[Int(chain.parent)].poolOrder) }
        return total
    }

    /// Every live grant's consumed plus held, with its products: what tests compare before and
    /// after a decision to see which grants it drew on.
    public func grantUsage() -> [(id: GrantID, used: Credits, products: [String])] {
        grants.filter(\.isLive).map { ($0.id, $0.consumed + $0.held, $0.isScoped ? products(ofGrant: $0.id) : []) }
    }

    /// The products a grant is scoped to, for reads; empty for any product.
    func products(ofGrant id: GrantID) -> [String] {
        grantProducts[id] ?? []
    }

    /// Marks the grants `grantProducts` names as scoped and counts them per account, after a
    /// snapshot or a transfer is read; what is wrong with the table, if anything.
    mutating func rebuildScopes() -> String? {
        for (id, products) in grantProducts {
            guard let slot = grantSlotByID[id], grants[Int(slot)].isLive else { return "products of grant \(id), which is not live" }
            let account = grants[Int(slot)].account
            guard account >= 0, Int(account) < accounts.count else { return "grant \(id) of an unknown account slot \(account)" }
            guard !products.isEmpty, problem(products: products) == nil, products == products.sorted() else { return "bad products of grant \(id)" }
            grants[Int(slot)].isScoped = true
            accounts[Int(account)].scopedGrants += 1
        }
        if !grantProducts.isEmpty { rulesInUse.value = true }
        return nil
    }
}
