-- Step 2 of 3: prove the bound on the rows already there. VALIDATE scans the
-- table but takes only a SHARE UPDATE EXCLUSIVE lock, so writers keep
-- inserting meanwhile. Should a row lie past the bound (a writer whose clock
-- ran days ahead), the bound moves past the last row instead (that path
-- holds an exclusive lock while it scans; it cannot happen with sane clocks).
DO $$
DECLARE
    last_row timestamptz;
BEGIN
    ALTER TABLE checkouts VALIDATE CONSTRAINT checkouts_before_partitioning;
EXCEPTION WHEN check_violation THEN
    SELECT max(created_at) INTO last_row FROM checkouts;
    ALTER TABLE checkouts DROP CONSTRAINT checkouts_before_partitioning;
    EXECUTE format(
        'ALTER TABLE checkouts ADD CONSTRAINT checkouts_before_partitioning CHECK (created_at < %L)',
        (date_trunc('day', last_row AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC');
END
$$;
