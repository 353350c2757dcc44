-- Transactional outbox: rows written in the same transaction as the state change they
-- announce; the relay publishes them to JetStream and deletes them once acknowledged.
CREATE TABLE outbox (
    seq        bigserial PRIMARY KEY,
    event_id   text NOT NULL UNIQUE,
    mall_id    text NOT NULL,
    subject    text NOT NULL,
    payload    bytea NOT NULL,
    headers    jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Inbox: one row per (consumer, event) handled, written in the handler's transaction so that
-- a redelivered message is recognised and acknowledged without acting twice.
CREATE TABLE inbox (
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Messages a consumer could not handle: kept whole so that ops can inspect and replay them.
CREATE TABLE dead_letters (
    id           bigserial PRIMARY KEY,
    consumer     text NOT NULL,
    event_id     text NOT NULL,
    subject      text NOT NULL,
    stream_seq   bigint,
    payload      bytea NOT NULL,
    headers      jsonb NOT NULL DEFAULT '{}',
    error        text NOT NULL,
    deliveries   integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at  timestamptz
);
CREATE INDEX dead_letters_pending ON dead_letters (consumer, id) WHERE replayed_at IS NULL;
