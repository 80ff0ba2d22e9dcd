-- Double sales: purchases Redis answered 200 that Postgres refused because it
-- already records their item as bought with another code. That happens only
-- when Redis lost writes (a failover to a replica that had not received them,
-- a crash past the last AOF fsync) and sold the item again before it was
-- reconciled. The buyer holds a 200 that no purchase row backs, so each is kept
-- here, next to the purchase that won, for support and for `flashsale check`:
-- durably, in the same transaction that refused it (Redis's dead letter, which
-- also gets the entry, can itself be lost in the next failover).
CREATE TABLE IF NOT EXISTS double_sales (
    sale_id          bigint      NOT NULL,
    item_id          bigint      NOT NULL,
    user_id          bigint      NOT NULL,  -- the buyer whose purchase was refused
    code             text        NOT NULL,
    sold_at          timestamptz NOT NULL,  -- when Redis sold it again (Redis's clock)
    recorded_user_id bigint      NOT NULL,  -- the buyer of the purchase row
    recorded_code    text        NOT NULL,
    reported_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sale_id, item_id, code)    -- a retried batch reports it once
);
