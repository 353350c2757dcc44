-- The commitment RPCs check callers and store owners against the process's in-memory copy of
-- member's DIRECTORY bucket (kit.directory), like the rest of coupons; the SQL copy fed by
-- member.directory.* events is gone.
DROP TABLE commitment_credentials, commitment_stores;
