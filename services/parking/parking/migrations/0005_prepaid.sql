-- A member may settle a stay before leaving (ParkingService.SettleMemberExit): the session
-- stays open until the car passes the exit gate, which lets it out without payment until
-- prepaid_until and charges the time after it.
ALTER TABLE sessions
    ADD COLUMN prepaid_quote_id  uuid,
    ADD COLUMN prepaid_at        timestamptz,
    ADD COLUMN prepaid_until     timestamptz,
    ADD COLUMN prepay_request_id text NOT NULL DEFAULT '';
