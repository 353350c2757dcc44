-- Car-park credentials are checked against the in-memory copy of member's DIRECTORY bucket.
DROP TABLE credentials;
