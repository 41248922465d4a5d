-- salespulse schema v5: distinct customers over any range of up to 31 days
-- from a few thousand aggregate rows, not from the range's raw rows.
--
-- A customer is counted once in a range [a, b): by the first of their
-- orders in it, which is the one order in it whose previous order (by the
-- same customer) is before a, or that has none. order_gaps counts the orders
-- of each UTC hour by how many hours back, between the hours' starts, the
-- customer's previous order was (744 at most; 745: further back, or the
-- first order). For the whole hours of a range the readers sum the orders
-- whose previous order is before the range's first hour; the minutes at the
-- edges come from the raw rows (`analytics::sql::distinct_customers`).
-- Orders are in (occurred_at, transaction_id) order. Ingest folds each
-- batch's orders in the same transaction as the rows, including an order
-- that arrives late (it becomes the previous order of its customer's next
-- one, which moves to another bucket); `rollups verify` checks it.

CREATE TABLE order_gaps (
    hour   timestamptz NOT NULL,
    back   integer     NOT NULL CHECK (back BETWEEN 0 AND 745),
    orders bigint      NOT NULL,
    PRIMARY KEY (hour, back)
) WITH (fillfactor = 80);

INSERT INTO order_gaps (hour, back, orders)
SELECT hour, back, count(*)
FROM (SELECT date_trunc('hour', occurred_at, 'UTC') AS hour,
             CASE WHEN prev IS NULL THEN 745
                  ELSE least(745, (extract(epoch FROM date_trunc('hour', occurred_at, 'UTC')
                            - date_trunc('hour', prev, 'UTC')) / 3600)::int4) END AS back
      FROM (SELECT occurred_at, lag(occurred_at) OVER (PARTITION BY customer_id
                        ORDER BY occurred_at, transaction_id) AS prev
            FROM transactions) ordered) raw
GROUP BY 1, 2;

-- A customer's orders in time order: ingest finds an order's neighbours,
-- and readers whether a customer ordered within a span, without reading
-- all of that customer's orders. It serves every lookup by customer the
-- seed's index on customer_id served, which it replaces.
CREATE INDEX transactions_customer_time_idx ON transactions (customer_id, occurred_at);
DROP INDEX transactions_customer_id_idx;
