// The contract's closed vocabularies (asyncapi.yaml `components.schemas`), raw values exactly
// as on the wire. Consumed enums are matched byte-wise by `FieldReader.enumeration`, never with
// `init(rawValue:)`, whose String comparison is canonical equivalence.

/// The 15 event types the worker consumes (routing key = type).
public enum ConsumedType: String, CaseIterable, Sendable {
    case leadCreated = "provisioning.lead.created"
    case orderPlaced = "provisioning.order.placed"
    case installScheduled = "provisioning.install.scheduled"
    case installCompleted = "provisioning.install.completed"
    case serviceActivated = "provisioning.service.activated"
    case serviceCancelled = "provisioning.service.cancelled"
    case speedtestCompleted = "provisioning.speedtest.completed"
    case ticketResolved = "crm.ticket.resolved"
    case preferencesChanged = "crm.preferences.changed"
    case ticketOpened = "crm.ticket.opened"
    case customerErased = "crm.customer.erased"
    case invoiceOverdue = "billing.invoice.overdue"
    case invoicePaid = "billing.invoice.paid"
    case creditApplied = "billing.credit.applied"
    case creditRejected = "billing.credit.rejected"
}

/// The 7 event types the worker publishes on `referral.events`.
public enum PublishedType: String, CaseIterable, Sendable {
    case codeIssued = "referral.code.issued"
    case friendOfferGranted = "referral.friend_offer.granted"
    case rewardIssued = "referral.reward.issued"
    case rewardReversed = "referral.reward.reversed"
    case askDue = "referral.ask.due"
    case leadFollowupDue = "referral.lead.followup_due"
    case statusChanged = "referral.status.changed"
}

/// Sales channel of a lead; `other` for anything not listed.
public enum LeadChannel: String, CaseIterable, Sendable {
    case web, app, phone, retail
    case fieldSales = "field_sales"
    case partner, other
}
