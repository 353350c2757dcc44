"""Mall Circle coupons service."""
