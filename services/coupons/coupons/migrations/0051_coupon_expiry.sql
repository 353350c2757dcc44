-- Coupon expiry: coupons.coupon.expiring once per coupon some days (3) before it expires,
-- stamped in the transaction that queues the event; then status 'expired' + coupons.coupon.expired.
ALTER TABLE coupons ADD COLUMN expiry_reminded_at timestamptz;
ALTER TABLE coupons ADD COLUMN expired_at timestamptz;
-- What the expiry job looks for, across malls (the job is one for the whole deployment).
CREATE INDEX coupons_due_to_expire ON coupons (valid_until) WHERE status = 'available';
CREATE INDEX coupons_to_remind ON coupons (valid_until)
    WHERE status = 'available' AND expiry_reminded_at IS NULL;
