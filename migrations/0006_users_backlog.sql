-- The writer records a checkout batch's new users apart from the batch, in
-- fewer and bigger transactions (see docs/records.md, "users"). Until a
-- writer's users are committed, its row here says from which checkout time
-- on `checkouts` may name users that `users` does not have yet. The row is
-- written in the same transaction as the checkout batch it covers and
-- deleted once those users are committed; a row left behind (the writer was
-- killed) is repaired by any instance: the users of the checkouts from
-- `since` on are inserted, then the row is deleted.
CREATE TABLE IF NOT EXISTS users_backlog (
    writer     bigint      PRIMARY KEY,            -- random per writer process
    since      timestamptz NOT NULL,               -- earliest checkout whose user may be missing
    updated_at timestamptz NOT NULL DEFAULT now()  -- Postgres's clock: when the writer last wrote it
);
