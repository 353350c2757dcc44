-- Points sync to WeChat Pay (积分同步): one row per report owed to the platform, written in
-- the same transaction as the ledger entry it reports, delivered by the sync worker. An
-- outbox for one HTTP call: nothing credited is left unreported, nothing reported twice
-- at once (claims take a lease; see points.adapters.wechat_sync).
CREATE TABLE wechat_points_sync (
    mall_id            text NOT NULL,
    transaction_id     text NOT NULL,
    kind               text NOT NULL CHECK (kind IN ('credit', 'reversal')),
    openid             text NOT NULL,
    appid              text NOT NULL,
    sub_mchid          text,
    earn_points        boolean NOT NULL,
    increased_points   bigint NOT NULL CHECK (increased_points >= 0),
    total_points       bigint NOT NULL,
    points_update_time timestamptz NOT NULL,
    no_points_remarks  text,
    state              text NOT NULL DEFAULT 'PENDING'
                       CHECK (state IN ('PENDING', 'SENT', 'FAILED')),
    -- Tries so far; also the fencing token of the current claim.
    attempts           integer NOT NULL DEFAULT 0,
    -- PENDING: due at this time. While a worker holds the row it is the end of its lease.
    next_attempt_at    timestamptz NOT NULL DEFAULT now(),
    -- The platform's error code (e.g. PARAM_ERROR) of the last failure, and what it said.
    error_code         text,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    sent_at            timestamptz,
    PRIMARY KEY (mall_id, transaction_id, kind),
    CHECK (earn_points = (increased_points > 0)),
    CHECK (earn_points OR no_points_remarks IS NOT NULL),
    CHECK ((state = 'SENT') = (sent_at IS NOT NULL))
);
-- What the worker claims (due PENDING rows, oldest first) and what ops list (not yet SENT).
CREATE INDEX wechat_points_sync_unsent ON wechat_points_sync (state, next_attempt_at)
    WHERE state <> 'SENT';
-- Ops look a payment up by its transaction id alone.
CREATE INDEX wechat_points_sync_transaction ON wechat_points_sync (transaction_id);
