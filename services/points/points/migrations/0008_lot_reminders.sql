-- Expiry reminders: the expiry job publishes points.points.expiring once per lot, some days
-- (EXPIRY_REMINDER_DAYS) before it expires, and stamps the lot in the same transaction.
ALTER TABLE lots ADD COLUMN reminded_at timestamptz;
-- What the reminder looks for, across malls.
CREATE INDEX lots_to_remind ON lots (expires_at) WHERE points_remaining > 0 AND reminded_at IS NULL;
