/// A consumed event that passed its type's schema: envelope attributes plus the typed payload.
public struct InboundEvent: Sendable, Equatable {
    /// With `source`, identifies the event: the same pair twice has the effect of one.
    public var id: String
    public var source: String
    public var type: ConsumedType
    /// When the fact happened by the producer's clock; dates facts without a time of their own.
    public var time: Instant
    public var subject: String?
    public var payload: EventPayload
}

/// One case per consumed type, each carrying exactly that type's `data` fields.
public enum EventPayload: Sendable, Equatable {
    case leadCreated(LeadCreated)
    case orderPlaced(OrderPlaced)
    case installScheduled(InstallScheduled)
    case installCompleted(InstallCompleted)
    case serviceActivated(ServiceActivated)
    case serviceCancelled(ServiceCancelled)
    case speedtestCompleted(SpeedtestCompleted)
    case ticketResolved(TicketResolved)
    case preferencesChanged(PreferencesChanged)
    case ticketOpened(TicketOpened)
    case customerErased(CustomerErased)
    case invoiceOverdue(InvoiceOverdue)
    case invoicePaid(InvoicePaid)
    case creditApplied(CreditApplied)
    case creditRejected(CreditRejected)

    /// Decodes `data` as `type`'s schema says; unknown members are ignored (every consumed
    /// schema has `additionalProperties: true`), optional members may be absent or `null`.
    static func decode(_ type: ConsumedType, _ d: FieldReader) throws(FieldError) -> EventPayload {
        switch type {
        case .leadCreated:
            .leadCreated(
                LeadCreated(
                    leadId: try d.required("lead_id", .id), referralCode: try d.optional("referral_code", .any),
                    householdId: try d.optional("household_id", .id), contactHash: try d.optional("contact_hash", .id),
                    segment: try d.optional("segment", .oneOf), channel: try d.optional("channel", .oneOf)))
        case .orderPlaced:
            .orderPlaced(
                OrderPlaced(leadId: try d.required("lead_id", .id), accountId: try d.required("account_id", .id)))
        case .installScheduled:
            .installScheduled(
                InstallScheduled(
                    accountId: try d.required("account_id", .id),
                    scheduledFor: try d.required("scheduled_for", .timestamp)))
        case .installCompleted:
            .installCompleted(
                InstallCompleted(
                    accountId: try d.required("account_id", .id),
                    completedAt: try d.required("completed_at", .timestamp)))
        case .serviceActivated:
            .serviceActivated(
                ServiceActivated(
                    accountId: try d.required("account_id", .id),
                    activatedAt: try d.required("activated_at", .timestamp),
                    householdId: try d.optional("household_id", .id), contactHash: try d.optional("contact_hash", .id),
                    segment: try d.optional("segment", .oneOf), planId: try d.optional("plan_id", .id)))
        case .serviceCancelled:
            .serviceCancelled(
                ServiceCancelled(
                    accountId: try d.required("account_id", .id),
                    cancelledAt: try d.required("cancelled_at", .timestamp),
                    reason: try d.optional("reason", .nonEmpty)))
        case .speedtestCompleted:
            .speedtestCompleted(
                SpeedtestCompleted(
                    accountId: try d.required("account_id", .id),
                    measuredDownMbps: try d.required("measured_down_mbps", .number(minimum: 0)),
                    planDownMbps: try d.required("plan_down_mbps", .number(exclusiveMinimum: 0))))
        case .ticketResolved:
            .ticketResolved(
                TicketResolved(
                    accountId: try d.required("account_id", .id), ticketId: try d.required("ticket_id", .id),
                    csat: try d.optional("csat", .integer(min: 1, max: 5)).map { Int($0) }))
        case .preferencesChanged:
            .preferencesChanged(
                PreferencesChanged(
                    accountId: try d.required("account_id", .id),
                    referralPrompts: try d.required("referral_prompts", .boolean)))
        case .ticketOpened:
            .ticketOpened(
                TicketOpened(accountId: try d.required("account_id", .id), ticketId: try d.required("ticket_id", .id)))
        case .customerErased:
            .customerErased(CustomerErased(accountId: try d.required("account_id", .id)))
        case .invoiceOverdue:
            .invoiceOverdue(
                InvoiceOverdue(
                    accountId: try d.required("account_id", .id), invoiceId: try d.required("invoice_id", .id),
                    daysOverdue: Int(try d.required("days_overdue", .integer(min: 1)))))
        case .invoicePaid:
            .invoicePaid(
                InvoicePaid(
                    accountId: try d.required("account_id", .id), invoiceId: try d.required("invoice_id", .id),
                    amountMinor: try d.required("amount_minor", .amount),
                    currency: try d.required("currency", .currency),
                    sequence: Int(try d.required("sequence", .integer(min: 1))),
                    creditsMinor: try d.optional("credits_minor", .amount)))
        case .creditApplied:
            .creditApplied(
                CreditApplied(
                    rewardId: try d.required("reward_id", .id), accountId: try d.required("account_id", .id),
                    amountMinor: try d.required("amount_minor", .amount),
                    currency: try d.required("currency", .currency)))
        case .creditRejected:
            .creditRejected(
                CreditRejected(rewardId: try d.required("reward_id", .id), reason: try d.required("reason", .nonEmpty)))
        }
    }
}

/// `provisioning.lead.created`. The lead is dated by the envelope `time`.
public struct LeadCreated: Sendable, Equatable {
    public var leadId: String
    /// As entered, not normalised; see `code`.
    public var referralCode: String?
    public var householdId: String?
    public var contactHash: String?
    public var segment: Segment?
    public var channel: LeadChannel?

    /// The entered code when it reads as a valid one; nil means an unattributed lead, not an error.
    public var code: ReferralCode? { referralCode.flatMap(ReferralCode.parse) }
}

/// `provisioning.order.placed`: links the lead to the friend's new account.
public struct OrderPlaced: Sendable, Equatable {
    public var leadId: String
    public var accountId: String
}

/// `provisioning.install.scheduled`.
public struct InstallScheduled: Sendable, Equatable {
    public var accountId: String
    public var scheduledFor: Instant
}

/// `provisioning.install.completed`.
public struct InstallCompleted: Sendable, Equatable {
    public var accountId: String
    public var completedAt: Instant
}

/// `provisioning.service.activated`.
public struct ServiceActivated: Sendable, Equatable {
    public var accountId: String
    public var activatedAt: Instant
    public var householdId: String?
    public var contactHash: String?
    public var segment: Segment?
    public var planId: String?
}

/// `provisioning.service.cancelled`.
public struct ServiceCancelled: Sendable, Equatable {
    public var accountId: String
    public var cancelledAt: Instant
    public var reason: String?
}

/// `provisioning.speedtest.completed`, in Mbit/s.
public struct SpeedtestCompleted: Sendable, Equatable {
    public var accountId: String
    public var measuredDownMbps: Double
    /// Always above 0, so `measuredDownMbps / planDownMbps` is defined.
    public var planDownMbps: Double
}

/// `crm.ticket.resolved`.
public struct TicketResolved: Sendable, Equatable {
    public var accountId: String
    public var ticketId: String
    /// 1 (worst) to 5 (best), nil when the customer did not answer.
    public var csat: Int?
}

/// `crm.preferences.changed`.
public struct PreferencesChanged: Sendable, Equatable {
    public var accountId: String
    public var referralPrompts: Bool
}

/// `crm.ticket.opened`.
public struct TicketOpened: Sendable, Equatable {
    public var accountId: String
    public var ticketId: String
}

/// `crm.customer.erased`.
public struct CustomerErased: Sendable, Equatable {
    public var accountId: String
}

/// `billing.invoice.overdue`.
public struct InvoiceOverdue: Sendable, Equatable {
    public var accountId: String
    public var invoiceId: String
    /// 1 or more.
    public var daysOverdue: Int
}

/// `billing.invoice.paid`. Dated by the envelope `time`.
public struct InvoicePaid: Sendable, Equatable {
    public var accountId: String
    public var invoiceId: String
    /// 0...2^53-1, in the currency's minor unit.
    public var amountMinor: Int64
    public var currency: String
    /// 1 is the account's first invoice.
    public var sequence: Int
    public var creditsMinor: Int64?
}

/// `billing.credit.applied`.
public struct CreditApplied: Sendable, Equatable {
    public var rewardId: String
    public var accountId: String
    public var amountMinor: Int64
    public var currency: String
}

/// `billing.credit.rejected`.
public struct CreditRejected: Sendable, Equatable {
    public var rewardId: String
    public var reason: String
}
