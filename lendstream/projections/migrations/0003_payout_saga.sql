-- The payout saga (issue 4): partner credit line state, and saga rows that only move forward.

-- Each partner's credit line as the treasury processor folds it (holds per payout included),
-- written with `partner_credit` in the same transaction. `seq` counts the batches that changed
-- it: the worker takes this copy instead of its RocksDB table's when this one is newer.
CREATE TABLE credit_line_state (
    partner_id text        PRIMARY KEY,
    seq        bigint      NOT NULL,
    state      bytea       NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The loan state's `seq` when the saga row was written: a redelivered batch never moves a
-- saga back.
ALTER TABLE saga_instances ADD COLUMN state_seq bigint NOT NULL DEFAULT 0;
ALTER TABLE saga_instances ADD COLUMN partner_id text;
ALTER TABLE saga_instances ADD COLUMN amount_cents bigint;
ALTER TABLE saga_instances ADD COLUMN currency text;
CREATE INDEX saga_instances_status ON saga_instances (status);
