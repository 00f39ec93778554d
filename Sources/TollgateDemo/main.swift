import TollgateLedger
import TollgateLedgerTestSupport

// A walk through the seeds' Team plan on the in-memory ledger: four seats sharing 400 pooled
// credits, a 1,000-credit top-up that is drawn only after them, and the gate refusing at zero.
// The server (tollgated) will replace this demo as the README's first command.

var driver = LedgerDriver()
Fixtures.seedsExample(&driver)
print("Team plan: account acme, seats ana ben cy dee, 400 pooled credits, 1,000-credit top-up at priority 100")
print("Rates: ai.assistant 12, ai.preview 5, ai.summary 7 credits\n")

func show(_ label: String, _ answer: Answer) {
    switch answer {
    case .decision(let decision):
        let hold = decision.hold.map { " hold \($0)" } ?? ""
        print("\(label): allowed, cost \(decision.cost)\(hold); funds left \(decision.headroom.funds)")
    case .committed(let result):
        print("\(label): committed \(result.committed), returned \(result.returned); funds left \(result.headroom.funds)")
    case .released(let result):
        print("\(label): released \(result.released); funds left \(result.headroom.funds)")
    case .refused(let refusal):
        print("\(label): REFUSED — \(refusal.error); funds left \(refusal.headroom.map { String($0.funds) } ?? "?")")
    default:
        print("\(label): \(answer)")
    }
}

let request = DecisionRequest(account: "acme", member: "ana", product: Fixtures.assistant, quantity: 1)
let reserved = driver.run(.reserve(Reserve(request, ttlMicroseconds: 30 * Microseconds.perSecond)))
show("ana reserves ai.assistant", reserved)
if case .decision(let decision) = reserved, let hold = decision.hold {
    show("ana commits 10 of 12", driver.run(.commit(Commit(HoldReference(account: "acme", hold: hold), amount: .credits(10)))))
}
var spent = 0
while true {
    let answer = driver.run(.spend(Spend(DecisionRequest(account: "acme", member: "ben", product: Fixtures.summary, quantity: 10))))
    if answer.isRefused {
        show("ben spends ai.summary × 10 after \(spent) spends", answer)
        break
    }
    spent += 1
}
let balance = driver.balance(account: "acme")
print("\nBalance of acme: pool \(balance.funds.pool), consumed this period \(balance.levels.last!.consumed)")
for grant in balance.grants {
    print("  grant \(grant.id) priority \(grant.priority): amount \(grant.amount), available \(grant.available), consumed \(grant.consumed)")
}
