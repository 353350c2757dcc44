-- parking: its copy of the directory, policy and fee schedules, plates, member benefit facts,
-- sessions, quotes (with points holds), anomalies for the operator.

-- The slice of member's directory parking needs, kept from member.directory.* events.
CREATE TABLE malls (
    mall_id     text PRIMARY KEY,
    time_zone   text NOT NULL DEFAULT 'Asia/Shanghai',
    appid       text NOT NULL DEFAULT '',
    brand_id    text NOT NULL DEFAULT '',
    mchid       text NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE car_parks (
    mall_id      text NOT NULL,
    car_park_id  text NOT NULL,
    name         text NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, car_park_id)
);

-- Car-park credentials (hash only); the lookup by id alone is how a caller's mall is learnt.
CREATE TABLE credentials (
    credential_id  text PRIMARY KEY,
    mall_id        text NOT NULL,
    car_park_id    text,
    secret_hash    text NOT NULL,
    revoked_at     timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE parking_policies (
    mall_id     text PRIMARY KEY,
    policy      jsonb NOT NULL,
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE fee_schedules (
    mall_id                text NOT NULL,
    car_park_id            text NOT NULL,
    version                bigint NOT NULL,
    effective_from         timestamptz NOT NULL,
    free_minutes           integer NOT NULL,
    unit_minutes           integer NOT NULL,
    unit_fee_fen           bigint NOT NULL,
    daily_cap_fen          bigint NOT NULL,
    night_start_minute     integer NOT NULL,
    night_end_minute       integer NOT NULL,
    night_unit_fee_fen     bigint NOT NULL,
    missing_entry_fee_fen  bigint NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, car_park_id, version)
);

CREATE TABLE plates (
    mall_id          text NOT NULL,
    plate_number     text NOT NULL,
    member_id        text NOT NULL,
    plate_color      text NOT NULL,
    pay_with_points  boolean NOT NULL DEFAULT false,
    appid            text NOT NULL DEFAULT '',
    openid           text NOT NULL DEFAULT '',
    bound_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, plate_number)
);
CREATE INDEX plates_by_member ON plates (mall_id, member_id);

-- Every bind, unbind and refused takeover of a plate, for the operator.
CREATE TABLE plate_audit (
    id                  bigserial PRIMARY KEY,
    mall_id             text NOT NULL,
    plate_number        text NOT NULL,
    member_id           text NOT NULL,
    action              text NOT NULL CHECK (action IN ('bound', 'updated', 'unbound', 'refused')),
    holder_member_id    text,
    at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX plate_audit_by_plate ON plate_audit (mall_id, plate_number, id);

-- Facts about members learnt from member's events.
CREATE TABLE member_tiers (
    mall_id     text NOT NULL,
    member_id   text NOT NULL,
    tier_code   text NOT NULL,
    as_of       timestamptz NOT NULL,
    PRIMARY KEY (mall_id, member_id)
);

CREATE TABLE member_payments (
    mall_id         text NOT NULL,
    transaction_id  text NOT NULL,
    member_id       text NOT NULL,
    amount_fen      bigint NOT NULL,
    paid_at         timestamptz NOT NULL,
    PRIMARY KEY (mall_id, transaction_id)
);
CREATE INDEX member_payments_by_member ON member_payments (mall_id, member_id, paid_at);

-- Refunds stand alone: one may arrive before its payment and still count once it is there.
CREATE TABLE member_refunds (
    mall_id         text NOT NULL,
    refund_id       text NOT NULL,
    transaction_id  text NOT NULL,
    member_id       text NOT NULL,
    amount_fen      bigint NOT NULL,
    PRIMARY KEY (mall_id, refund_id)
);
CREATE INDEX member_refunds_by_payment ON member_refunds (mall_id, transaction_id);

CREATE TABLE sessions (
    mall_id          text NOT NULL,
    session_id       uuid NOT NULL,
    car_park_id      text NOT NULL,
    plate_number     text NOT NULL,
    plate_color      text NOT NULL DEFAULT '',
    member_id        text,
    status           text NOT NULL CHECK (status IN ('open', 'settled', 'abandoned')),
    entered_at       timestamptz NOT NULL,
    entry_ref        text,
    entry_gate       text NOT NULL DEFAULT '',
    entry_missing    boolean NOT NULL DEFAULT false,
    pay_score        boolean NOT NULL DEFAULT false,
    exited_at        timestamptz,
    exit_gate        text NOT NULL DEFAULT '',
    gross_fee_fen    bigint NOT NULL DEFAULT 0,
    discount_fen     bigint NOT NULL DEFAULT 0,
    paid_fen         bigint NOT NULL DEFAULT 0,
    payment_method   text NOT NULL DEFAULT '',
    benefits         jsonb NOT NULL DEFAULT '[]',
    settled_quote_id uuid,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, session_id)
);
CREATE UNIQUE INDEX sessions_entry_ref ON sessions (mall_id, car_park_id, entry_ref);
CREATE UNIQUE INDEX sessions_one_open_per_plate
    ON sessions (mall_id, car_park_id, plate_number) WHERE status = 'open';
CREATE INDEX sessions_by_member ON sessions (mall_id, member_id) WHERE status = 'open';
CREATE INDEX sessions_by_exit_day ON sessions (mall_id, exited_at);
CREATE INDEX sessions_by_entry_day ON sessions (mall_id, entered_at);

-- Quotes, and the points held for them: held -> confirmed (the car left on this quote) or
-- released (another quote, or the car did not leave in time). 'confirm'/'release' are
-- decisions waiting for the points call.
CREATE TABLE quotes (
    mall_id           text NOT NULL,
    quote_id          uuid NOT NULL,
    session_id        uuid NOT NULL,
    member_id         text,
    quoted_at         timestamptz NOT NULL,
    valid_until       timestamptz NOT NULL,
    parked_minutes    integer NOT NULL,
    gross_fee_fen     bigint NOT NULL,
    discount_fen      bigint NOT NULL,
    payable_fen       bigint NOT NULL,
    benefits          jsonb NOT NULL,
    schedule_version  bigint NOT NULL,
    hold_id           text,
    hold_points       bigint NOT NULL DEFAULT 0,
    hold_state        text NOT NULL DEFAULT 'none'
        CHECK (hold_state IN ('none', 'held', 'confirm', 'confirmed', 'release', 'released',
                              'failed')),
    hold_attempts     integer NOT NULL DEFAULT 0,
    hold_next_at      timestamptz NOT NULL DEFAULT now(),
    hold_error        text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, quote_id)
);
CREATE INDEX quotes_by_session ON quotes (mall_id, session_id);
CREATE INDEX quotes_holds_to_settle ON quotes (hold_next_at)
    WHERE hold_state IN ('held', 'confirm', 'release');

CREATE TABLE anomalies (
    anomaly_id    uuid PRIMARY KEY,
    mall_id       text NOT NULL,
    car_park_id   text NOT NULL,
    plate_number  text NOT NULL,
    session_id    uuid,
    kind          text NOT NULL,
    detail        text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX anomalies_by_mall ON anomalies (mall_id, created_at DESC);

-- Calls to WeChat Pay about sessions (parking state sync, pay-score), sent by the relay role's
-- worker with retries; one row per (session, kind), visible to ops.
CREATE TABLE wechat_calls (
    id             bigserial PRIMARY KEY,
    mall_id        text NOT NULL,
    session_id     uuid NOT NULL,
    kind           text NOT NULL
        CHECK (kind IN ('state_in', 'state_out', 'pay_score_entry', 'pay_score_deduction')),
    state          text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'sent', 'failed', 'skipped')),
    payload        jsonb NOT NULL,
    attempts       integer NOT NULL DEFAULT 0,
    next_at        timestamptz NOT NULL DEFAULT now(),
    attempted_at   timestamptz,
    last_error     text NOT NULL DEFAULT '',
    platform_ref   text NOT NULL DEFAULT '',
    UNIQUE (mall_id, session_id, kind)
);
CREATE INDEX wechat_calls_due ON wechat_calls (next_at) WHERE state = 'pending';
