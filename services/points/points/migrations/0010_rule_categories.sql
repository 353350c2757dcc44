-- Earning rules may be scoped to a tenant category (member's directory puts the tenant's
-- category on each PaymentAttributed), exclusive with tenant_id.
ALTER TABLE earning_rules ADD COLUMN tenant_category text NOT NULL DEFAULT '';
ALTER TABLE earning_rules ADD CONSTRAINT earning_rules_tenant_or_category
    CHECK (tenant_id = '' OR tenant_category = '');

-- A mall's expiry policy for new lots ('end_of_next_year' or 'days:N'); NULL uses the
-- service's POINTS_EXPIRY_POLICY setting.
ALTER TABLE mall_policies ADD COLUMN expiry_policy text
    CHECK (expiry_policy ~ '^(end_of_next_year|days:[1-9][0-9]{0,4})$');
