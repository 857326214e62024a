-- Failure handling (issue 3): transient retries, park deadlines and operator replays.

-- When a retrying dead letter is tried next; what an operator's replay applied (the original
-- `value` is kept as it was received).
ALTER TABLE dead_letters ADD COLUMN next_attempt_at timestamptz;
ALTER TABLE dead_letters ADD COLUMN replayed_value bytea;

-- The durable timer index: loans whose queue head has a retry or a park deadline coming, with
-- the partition that owns the loan. Written with the loan state (same transaction); the worker
-- owning the partition sends the loan a `FireTimers` command once `due_at` has passed.
CREATE TABLE loan_timers (
    loan_id   text        PRIMARY KEY,
    partition integer     NOT NULL,
    due_at    timestamptz NOT NULL
);
CREATE INDEX loan_timers_due ON loan_timers (partition, due_at);
