-- Settling finds its outbox rows by primary key, whatever the outbox holds.
--
-- ack_outbox and release_outbox join the ids a worker's leases name to the outbox. The planner
-- expects a thousand of them and chose to hash the whole outbox for that: with a 30,000-event
-- backlog, the ack of a 1,000-event batch read all 30,000 rows (7.5 of its 10 ms), so a
-- settle's cost grew with the backlog instead of the batch. Without hash or merge joins each
-- named id is one primary-key look-up. (claim_outbox is planned by its own settings.)

alter function integration.ack_outbox(uuid[], text)
    set enable_hashjoin = off;
alter function integration.ack_outbox(uuid[], text)
    set enable_mergejoin = off;
alter function integration.release_outbox(uuid[], text, timestamptz)
    set enable_hashjoin = off;
alter function integration.release_outbox(uuid[], text, timestamptz)
    set enable_mergejoin = off;
