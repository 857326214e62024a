-- Read models of contract §6. Applied inside the configured schema (search_path is set).

CREATE TABLE projection_positions (
    projection  text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (projection, topic, partition)
);

-- The loan processor's state per loan, written in the same transaction as the read models:
-- the authoritative copy when the RocksDB table (a changelog-backed cache) is behind.
CREATE TABLE loan_state (
    loan_id    text        PRIMARY KEY,
    seq        bigint      NOT NULL,
    state      bytea       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE loan_summary (
    loan_id               text        PRIMARY KEY,
    customer_id           text        NOT NULL,
    partner_id            text        NOT NULL,
    currency              text        NOT NULL,
    status                text        NOT NULL,
    term_months           integer     NOT NULL,
    applied_amount_cents  bigint      NOT NULL,
    approved_amount_cents bigint,
    interest_rate_bps     integer,
    total_due_cents       bigint,
    repaid_cents          bigint      NOT NULL,
    outstanding_cents     bigint      NOT NULL,
    applied_at            timestamptz NOT NULL,
    approved_at           timestamptz,
    paid_out_at           timestamptz,
    settled_at            timestamptz,
    closed_reason         text,
    version               integer     NOT NULL,
    updated_at            timestamptz NOT NULL
);
CREATE INDEX loan_summary_customer ON loan_summary (customer_id);
CREATE INDEX loan_summary_status ON loan_summary (status);

CREATE TABLE loan_history (
    loan_id               text        NOT NULL,
    version               integer     NOT NULL,
    customer_id           text        NOT NULL,
    partner_id            text        NOT NULL,
    currency              text        NOT NULL,
    status                text        NOT NULL,
    term_months           integer     NOT NULL,
    applied_amount_cents  bigint      NOT NULL,
    approved_amount_cents bigint,
    interest_rate_bps     integer,
    total_due_cents       bigint,
    repaid_cents          bigint      NOT NULL,
    outstanding_cents     bigint      NOT NULL,
    applied_at            timestamptz NOT NULL,
    approved_at           timestamptz,
    paid_out_at           timestamptz,
    settled_at            timestamptz,
    closed_reason         text,
    updated_at            timestamptz NOT NULL,
    valid_from            timestamptz NOT NULL,
    valid_to              timestamptz,
    PRIMARY KEY (loan_id, version)
);
CREATE INDEX loan_history_as_of ON loan_history (loan_id, valid_from);

CREATE TABLE customer_exposure (
    customer_id       text        NOT NULL,
    currency          text        NOT NULL,
    active_loans      integer     NOT NULL,
    outstanding_cents bigint      NOT NULL,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (customer_id, currency)
);

CREATE TABLE partner_credit (
    partner_id    text        PRIMARY KEY,
    currency      text,
    limit_cents   bigint      NOT NULL,
    in_use_cents  bigint      NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE daily_payouts (
    day          date    NOT NULL,
    partner_id   text    NOT NULL,
    currency     text    NOT NULL,
    payouts      integer NOT NULL,
    amount_cents bigint  NOT NULL,
    PRIMARY KEY (day, partner_id, currency)
);

CREATE TABLE ledger_entries (
    entry_id     text        PRIMARY KEY,
    event_id     text        NOT NULL,
    loan_id      text        NOT NULL,
    account      text        NOT NULL,
    direction    text        NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount_cents bigint      NOT NULL CHECK (amount_cents > 0),
    currency     text        NOT NULL,
    booked_at    timestamptz NOT NULL
);
CREATE INDEX ledger_entries_event ON ledger_entries (event_id);
CREATE INDEX ledger_entries_loan ON ledger_entries (loan_id);

CREATE TABLE event_log (
    event_id       text        PRIMARY KEY,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    "offset"       bigint      NOT NULL,
    key            text,
    type           text        NOT NULL,
    schema_version integer     NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL,
    loan_id        text,
    correlation_id text,
    causation_id   text,
    data           jsonb       NOT NULL
);
CREATE INDEX event_log_loan ON event_log (loan_id);

CREATE TABLE saga_instances (
    saga_id     text        PRIMARY KEY,
    saga_type   text        NOT NULL,
    loan_id     text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('running', 'completed', 'compensated', 'failed')),
    step        text        NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    deadline_at timestamptz,
    last_error  text
);

CREATE TABLE dead_letters (
    id              text        PRIMARY KEY,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    key             text,
    event_id        text,
    value           bytea,
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error_class     text        NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL DEFAULT 1,
    status          text        NOT NULL
                    CHECK (status IN ('parked', 'released', 'dead', 'replayed', 'discarded')),
    reason          text,
    first_seen_at   timestamptz NOT NULL,
    last_attempt_at timestamptz NOT NULL
);
CREATE INDEX dead_letters_status ON dead_letters (status, topic);
CREATE INDEX dead_letters_key ON dead_letters (topic, key);
CREATE INDEX dead_letters_event ON dead_letters (event_id);
