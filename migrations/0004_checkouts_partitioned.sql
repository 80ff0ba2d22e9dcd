-- Step 3 of 3: checkouts becomes a table partitioned by range of created_at,
-- with the same name and columns (analysts' queries keep working).
--
-- * The old table, when it holds rows, is attached as one partition,
--   checkouts_before_YYYYMMDD, covering everything before the bound that
--   step 1 set; its validated CHECK constraint proves the range, so
--   attaching it does not scan it. It is dropped, like the daily ones, once
--   the bound is older than the retention. An empty old table is dropped.
-- * checkouts_default catches any row whose day has no partition yet (the
--   server creates the daily partitions checkouts_YYYYMMDD ahead of time),
--   so that a row is never refused for want of a partition.
--
-- All of it is catalog work: the exclusive lock taken by the rename lasts
-- milliseconds.
ALTER TABLE checkouts RENAME TO checkouts_old;
ALTER INDEX checkouts_sale_time RENAME TO checkouts_old_sale_time;

CREATE TABLE checkouts (
    sale_id    bigint      NOT NULL,
    user_id    bigint      NOT NULL,
    item_id    bigint      NOT NULL,
    code       text,                  -- null when the attempt was rejected before a code existed
    outcome    text        NOT NULL,
    created_at timestamptz NOT NULL,
    -- named as the old table's, which a partition must carry
    CONSTRAINT checkouts_outcome_check
        CHECK (outcome IN ('ok', 'item_sold', 'limit_reached', 'item_not_found'))
) PARTITION BY RANGE (created_at);
CREATE INDEX checkouts_sale_time ON checkouts USING brin (sale_id, created_at);

DO $$
DECLARE
    bound timestamptz;
    old_name text;
BEGIN
    SELECT (regexp_match(pg_get_constraintdef(oid), '''([^'']+)'''))[1]::timestamptz
      INTO bound
      FROM pg_constraint
     WHERE conrelid = 'checkouts_old'::regclass AND conname = 'checkouts_before_partitioning';
    IF EXISTS (SELECT 1 FROM checkouts_old) THEN
        old_name := 'checkouts_before_' || to_char(bound AT TIME ZONE 'UTC', 'YYYYMMDD');
        EXECUTE format('ALTER TABLE checkouts_old RENAME TO %I', old_name);
        EXECUTE format('ALTER INDEX checkouts_old_sale_time RENAME TO %I', old_name || '_sale_time');
        EXECUTE format('ALTER TABLE checkouts ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
                       old_name, bound);
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT checkouts_before_partitioning', old_name);
    ELSE
        DROP TABLE checkouts_old;
    END IF;
END
$$;

CREATE TABLE checkouts_default PARTITION OF checkouts DEFAULT;
