-- Records a processor decided to send (saga steps, treasury commands and answers, customer
-- notifications), committed in the transaction of the batch that decided them and sent to
-- Kafka only after that commit; a row is deleted once Kafka has acknowledged its records.
-- A row left behind by a crash between the commit and the send is sent by the next worker
-- that takes part in a rebalance (lendstream.agents.payouts.Outbox).
CREATE TABLE outbox (
    id         uuid        PRIMARY KEY,
    projection text        NOT NULL,
    topics     text[]      NOT NULL,
    keys       bytea[]     NOT NULL,
    "values"   bytea[]     NOT NULL,
    partitions integer[]   NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_projection ON outbox (projection, created_at);
