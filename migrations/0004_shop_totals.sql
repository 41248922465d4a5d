-- salespulse schema v4: shop-wide totals kept by ingest in the same
-- transaction as the raw rows.
--
-- shop_totals.buyers: how many customers have ever ordered. Since customers
-- arrive and leave (most visitors never buy; most buyers buy once), the
-- customers table holds every visitor, and counting its buyers for the
-- dashboard's "all" range meant scanning tens of millions of rows. Each
-- batch adds the customers whose first order it holds (their order count
-- after the batch equals the batch's own). One row, present once there is
-- a sale; `rollups verify` checks it against the raw rows.

CREATE TABLE shop_totals (
    id     integer PRIMARY KEY CHECK (id = 1),
    buyers bigint  NOT NULL
);

INSERT INTO shop_totals (id, buyers)
SELECT 1, count(DISTINCT customer_id) FROM transactions GROUP BY 1;

-- The top customers of all time by completed revenue from an index over
-- the paying customers only, not a sort of every visitor: the unfiltered
-- `top_customers` view and a metric script's pushed-down top-k (which
-- sorts by `total_spent::float8` descending, nulls last, then by
-- `customer_id` bytewise) both read it in that order and stop at the limit.
CREATE INDEX customers_top_value ON customers
    ((total_spent::float8) DESC NULLS LAST, customer_id COLLATE "C" NULLS LAST)
    WHERE completed_orders > 0;
