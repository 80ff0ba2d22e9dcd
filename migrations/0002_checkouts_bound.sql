-- Turning checkouts into a table partitioned by day, step 1 of 3: a bound on
-- created_at for the rows already there, so that step 3 can attach the old
-- table as one partition without scanning it. NOT VALID: instant (no scan),
-- and enforced for rows written from now on. The bound is two days ahead
-- (UTC midnight), so the writers of a running older version keep inserting
-- into the old table until step 3 renames it.
DO $$
BEGIN
    EXECUTE format(
        'ALTER TABLE checkouts ADD CONSTRAINT checkouts_before_partitioning CHECK (created_at < %L) NOT VALID',
        (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '2 days') AT TIME ZONE 'UTC');
END
$$;
