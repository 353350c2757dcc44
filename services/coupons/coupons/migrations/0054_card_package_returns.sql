-- A used coupon made usable again (coupons.coupon.returned: its order was refunded) is returned
-- at the platform too (退券), and may be used again: each use/return cycle gets its own request
-- numbers, so the platform never mistakes a second use for a retry of the first.
ALTER TABLE card_package_coupons ADD COLUMN cycle integer NOT NULL DEFAULT 0;
