-- A claim in a backlog starts after the last full batch instead of walking past every event in
-- flight.
--
-- The due index keeps an event while a lease holds it (a lease writes no outbox row), so each
-- claim read, and rejected, every event still in flight before it found one to take: with two
-- routers, each claiming its next batch while it delivers one and settles another, 4,000-5,000
-- rows of 1.3 µs each per claim of 1,000, the largest part of a claim (perf).
--
-- Now, when the newest lease is a full batch (at least this claim's limit) and its last event is
-- still where that claim found it, the scan starts after that event. What it does not look at:
--   * events held back by their record's order (found by an earlier claim, not taken);
--   * events whose transaction committed after a later one was claimed (an ingest that was
--     slow to commit; the order of one record's events is unaffected: ingest stores them one
--     after the other);
-- these are claimed by a full scan, made at every 8th claim, by every claim that takes back an
-- expired lease or follows one that took less than a full batch, and at once when the scan
-- after the last batch finds nothing. So they wait at most 8 claims; per-record order, the
-- lease and settling rules and everything a claim returns are as before.

create sequence integration.claim_turn;
comment on sequence integration.claim_turn is 'Counts claims, so that every 8th one looks at the whole due index (claim_outbox).';

create or replace function integration.claim_outbox(p_worker text, p_limit integer DEFAULT 25, p_lease_seconds integer DEFAULT 60) RETURNS SETOF integration.outbox_state
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET plan_cache_mode TO 'force_custom_plan'
    SET enable_bitmapscan TO 'off'
    AS $$
declare
    -- Where the scan may start: every due event before it is in flight or waits for a full scan.
    v_after_at timestamptz;
    v_after_seq bigint;
begin
    perform integration.require(length(btrim(p_worker)) between 1 and 200,
        'claim_outbox: worker must be a non-empty name of at most 200 characters');
    perform integration.require(p_limit between 1 and 10000,
        'claim_outbox: limit must be between 1 and 10000');
    perform integration.require(p_lease_seconds between 1 and 86400,
        'claim_outbox: lease_seconds must be between 1 and 86400');
    perform integration.require(current_setting('transaction_isolation') = 'read committed',
        'claim_outbox: claim at READ COMMITTED (each step must see the leases committed before it)');
    -- One claim at a time, till commit: the next one sees this one's lease.
    perform pg_advisory_xact_lock(7461392051);
    if integration.take_back_expired_leases() = 0 and nextval('integration.claim_turn') % 8 <> 0 then
        select o.available_at, o.seq into v_after_at, v_after_seq
          from (select l.id, l.ids from integration.outbox_lease l order by l.id desc limit 1) l
          join integration.outbox o on o.id = l.ids[cardinality(l.ids)]
         where cardinality(l.ids) >= p_limit
           and coalesce(o.settled_lease, 0) < l.id;  -- not failed or handed back since
    end if;

    loop
        return query
        with held as materialized (
            select h.id from integration.outbox_lease l cross join lateral unnest(l.ids) as h(id)
        ), picked as materialized (
            select d.id, d.source, d.event_type, d.aggregate_type, d.aggregate_id, d.payload,
                   d.idempotency_key, d.signature_digest, d.occurred_at, d.attempts,
                   d.max_attempts, d.available_at, d.last_error, d.created_at, d.updated_at, d.seq,
                   d.traceparent, d.tracestate
              from integration.outbox d
             where d.status in ('pending', 'failed') and d.available_at <= now()
               and (v_after_at is null or (d.available_at, d.seq) > (v_after_at, v_after_seq))
               -- Not integration.in_flight: that looks every leased id up in the outbox, and a
               -- claim, on the hot path, needs the look-up only for the few settled ones.
               and (d.id not in (select id from held)
                    or (d.settled_lease is not null
                        and not exists (select 1 from integration.outbox_lease l
                                         where l.id > d.settled_lease and d.id = any(l.ids))))
               and not exists (
                   select 1 from integration.outbox earlier
                    where earlier.aggregate_key = d.aggregate_key  -- outbox_record_order_idx
                      and earlier.seq < d.seq
                      and earlier.status in ('pending', 'failed')
                      -- Two records may share a key: only the record's own events hold it back.
                      and earlier.aggregate_id = d.aggregate_id
                      and earlier.aggregate_type = d.aggregate_type
                      and earlier.source = d.source
                   offset 0)
             order by d.available_at, d.seq
             limit p_limit
        ), leased as (
            insert into integration.outbox_lease (worker, ids, open, expires_at)
            select p_worker, array_agg(p.id order by p.available_at, p.seq), count(*),
                   now() + make_interval(secs => p_lease_seconds)
              from picked p
            having count(*) > 0
            returning worker, claimed_at, expires_at
        )
        select p.id, p.source, p.event_type, p.aggregate_type, p.aggregate_id, p.payload,
               p.idempotency_key, p.signature_digest, p.occurred_at, 'processing'::text,
               p.attempts + 1, p.max_attempts, p.available_at, l.claimed_at, l.worker,
               l.expires_at, p.last_error, p.created_at, p.updated_at, p.seq, p.traceparent,
               p.tracestate
          from picked p cross join leased l
         order by p.available_at, p.seq;
        -- Nothing after the last full batch: what it left behind is all there is.
        exit when found or v_after_at is null;
        v_after_at := null;
    end loop;
end;
$$;

comment on function integration.claim_outbox(text, integer, integer) is 'Hands up to p_limit due events (pending, failed whose retry time came, or held by a lease that ran out) to p_worker under one lease, in order, one per record at a time; rows as integration.outbox_state shows them (attempts counts this one). Claims take turns (an advisory lock), so no two workers get the same event. In a backlog a claim starts after the last full batch; an event that was held back by its record or committed late before it is claimed within 8 claims.';
