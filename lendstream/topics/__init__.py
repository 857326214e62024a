"""Wire contracts: every topic declared once, with its events and codec (contract §3)."""

from __future__ import annotations

from lendstream.topics import control, loans, payments, payouts, treasury
from lendstream.topics.codec import Invalid, TopicSpec
from lendstream.topics.envelope import Event, LoanEvent

LOAN_EVENTS = TopicSpec(loans.TOPIC, "loan_id", loans.EVENTS, loans.UPCASTERS)
PAYMENT_EVENTS = TopicSpec(payments.TOPIC, "loan_id", payments.EVENTS)
PAYOUT_EVENTS = TopicSpec(payouts.TOPIC, "loan_id", payouts.EVENTS)
TREASURY_EVENTS = TopicSpec(treasury.TOPIC, "partner_id", treasury.EVENTS)
LOAN_CONTROL = TopicSpec(control.TOPIC, "loan_id", control.EVENTS)

#: The co-partitioned, loan-keyed topics the loan processor consumes together, in the order of a
#: loan's life (origination, payout, repayments): records with the same timestamp are folded
#: in this order, live (`delivery.BatchQueue`) and in a rebuild (`projections.replay`).
LOAN_KEYED = (LOAN_EVENTS, PAYOUT_EVENTS, PAYMENT_EVENTS)
#: What the loan processor consumes: the loan-keyed topics and its control topic.
LOAN_PROCESSOR_INPUTS = (*LOAN_KEYED, LOAN_CONTROL)
#: Topics upstream systems (and the ingest endpoint) write.
UPSTREAM = (LOAN_EVENTS, PAYMENT_EVENTS, TREASURY_EVENTS)
ALL = (LOAN_EVENTS, PAYMENT_EVENTS, PAYOUT_EVENTS, TREASURY_EVENTS, LOAN_CONTROL)
BY_NAME = {spec.name: spec for spec in ALL}

DEAD_LETTERS_TOPIC = "dead-letters"
CUSTOMER_NOTIFICATIONS_TOPIC = "customer-notifications"

__all__ = [
    "ALL",
    "BY_NAME",
    "CUSTOMER_NOTIFICATIONS_TOPIC",
    "DEAD_LETTERS_TOPIC",
    "LOAN_CONTROL",
    "LOAN_EVENTS",
    "LOAN_KEYED",
    "LOAN_PROCESSOR_INPUTS",
    "PAYMENT_EVENTS",
    "PAYOUT_EVENTS",
    "TREASURY_EVENTS",
    "UPSTREAM",
    "Event",
    "Invalid",
    "LoanEvent",
    "TopicSpec",
]
