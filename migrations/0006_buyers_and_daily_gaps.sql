-- salespulse schema v6: `customers` holds the people who ordered, and
-- distinct customers over whole days of any length come from
-- `order_gaps_daily` instead of one `customer_days` row per customer-day.

-- 1. Customers are buyers.
--
-- Until v5 every visitor's first session made a `customers` row; on the
-- 10 M-transaction bench database 80 % of its rows were visitors who never
-- ordered. Ingest upserted one such row per session (about one per raw row
-- inserted: most visitors are new), and every whole-history question about
-- buyers read past them. Now an order makes a customer; a visit is a row
-- of `sessions` only (`sessions_customer_id_idx` finds a customer's
-- visits). `first_seen` and `last_seen` are the customer's first and last
-- order; the visit count per customer is gone (count their `sessions`).

DELETE FROM customers WHERE orders = 0;

ALTER TABLE customers DROP COLUMN sessions;

-- What the sessions contributed (first and last visit, the smallest region
-- and country of any visit) goes: each is now over the orders alone.
UPDATE customers c
SET first_seen = t.first_at, last_seen = t.last_at, region = t.region, country = t.country
FROM (SELECT customer_id, min(occurred_at) AS first_at, max(occurred_at) AS last_at,
             min(region COLLATE "C") AS region, min(country COLLATE "C") AS country
      FROM transactions GROUP BY customer_id) t
WHERE t.customer_id = c.customer_id
  AND (c.first_seen, c.last_seen, c.region, c.country)
      IS DISTINCT FROM (t.first_at, t.last_at, t.region, t.country);

-- Whole-history counts of buyers (how many bought, how many bought again:
-- `analytics::pushdown::from_totals` answers a script's group-by-customer
-- from these totals) read this narrow index alone, not the table.
CREATE INDEX customers_buyers ON customers (completed_orders, orders);

-- 2. Order gaps by day.
--
-- As `order_gaps` (v5), by UTC day: the orders of each day by how many
-- days back, between the days' starts, the customer's previous order was
-- (100000: none). A range's whole days count the orders whose previous
-- order is before the range's first day; the ragged edges (under a day)
-- come from the raw rows (`analytics::sql::distinct_customers`). Ingest
-- folds both tables from the same read of each customer's neighbouring
-- orders; `rollups verify` checks both.

CREATE TABLE order_gaps_daily (
    day    timestamptz NOT NULL,
    back   integer     NOT NULL CHECK (back BETWEEN 0 AND 100000),
    orders bigint      NOT NULL,
    PRIMARY KEY (day, back)
) WITH (fillfactor = 80);

INSERT INTO order_gaps_daily (day, back, orders)
SELECT day, back, count(*)
FROM (SELECT date_trunc('day', occurred_at, 'UTC') AS day,
             CASE WHEN prev IS NULL THEN 100000
                  ELSE least(100000, (extract(epoch FROM date_trunc('day', occurred_at, 'UTC')
                            - date_trunc('day', prev, 'UTC')) / 86400)::int4) END AS back
      FROM (SELECT occurred_at, lag(occurred_at) OVER (PARTITION BY customer_id
                        ORDER BY occurred_at, transaction_id) AS prev
            FROM transactions) ordered) raw
GROUP BY day, back;

DROP TABLE customer_days;
