-- A credential may speak for the mall's CRM (mall-level, CrmService) instead of a tenant or
-- car park.
ALTER TABLE credentials ADD COLUMN scope text CHECK (scope IN ('crm'));
ALTER TABLE credentials DROP CONSTRAINT credentials_check;
ALTER TABLE credentials ADD CONSTRAINT credentials_one_principal
    CHECK (num_nonnulls(tenant_id, car_park_id, scope) = 1);

-- Rules that tag members automatically: spend at tenants of a category within a rolling
-- window (member_tags.source = 'rule'); evaluated on payments and by a periodic job.
CREATE TABLE tag_rules (
    mall_id         text NOT NULL REFERENCES malls,
    tag             text NOT NULL CHECK (tag ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    tenant_category text NOT NULL CHECK (tenant_category <> ''),
    window_days     integer NOT NULL CHECK (window_days BETWEEN 1 AND 365),
    min_spend_fen   bigint NOT NULL CHECK (min_spend_fen >= 1),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (mall_id, tag)
);
CREATE INDEX member_tags_source ON member_tags (mall_id, source, tag);
CREATE INDEX payments_tenant_paid ON payments (mall_id, tenant_id, paid_at);
