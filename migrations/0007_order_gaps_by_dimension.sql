-- salespulse schema v7: distinct customers under a category or a region
-- filter over whole days from `order_gaps_daily_by`, as v6 counts them
-- without a filter from `order_gaps_daily`.
--
-- Until v6 a dashboard filtered to one category or one region counted its
-- distinct customers from the raw rows: on the 10 M-transaction bench
-- database a month of one region, or one region over all time, took longer
-- than the statement timeout.
--
-- `order_gaps_daily_by` is `order_gaps_daily` per value of a dimension: the
-- orders of each day in that category (or region), by how many days back
-- the same customer's previous order *in the same category (region)* was
-- (100000: none). The customers with an order in category C in a range's
-- whole days are its orders there whose previous order in C is before the
-- range's first day; the edges under a day come from the raw rows
-- (`analytics::sql::distinct_customers`). Ingest folds it in the batch's
-- transaction, from a read of each customer's neighbouring orders with the
-- same value; `rollups verify` checks it. Filters on other dimensions, on
-- several values, or on two dimensions at once count from the raw rows.

CREATE TABLE order_gaps_daily_by (
    dim    text        NOT NULL CHECK (dim IN ('category', 'region')),
    value  text        NOT NULL,
    day    timestamptz NOT NULL,
    back   integer     NOT NULL CHECK (back BETWEEN 0 AND 100000),
    orders bigint      NOT NULL,
    PRIMARY KEY (dim, value, day, back)
) WITH (fillfactor = 80);

INSERT INTO order_gaps_daily_by (dim, value, day, back, orders)
SELECT dim, value, day, back, count(*)
FROM (SELECT dim, value, date_trunc('day', occurred_at, 'UTC') AS day,
             CASE WHEN prev IS NULL THEN 100000
                  ELSE least(100000, (extract(epoch FROM date_trunc('day', occurred_at, 'UTC')
                            - date_trunc('day', prev, 'UTC')) / 86400)::int4) END AS back
      FROM (SELECT 'category' AS dim, category AS value, occurred_at,
                   lag(occurred_at) OVER (PARTITION BY customer_id, category
                                          ORDER BY occurred_at, transaction_id) AS prev
            FROM transactions
            UNION ALL
            SELECT 'region', region, occurred_at,
                   lag(occurred_at) OVER (PARTITION BY customer_id, region
                                          ORDER BY occurred_at, transaction_id)
            FROM transactions) ordered) raw
GROUP BY dim, value, day, back
ORDER BY dim, value, day, back;
