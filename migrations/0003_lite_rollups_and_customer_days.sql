-- salespulse schema v3: two more structures written by ingest in the same
-- transaction as the raw rows, so that a cold dashboard over days or months
-- reads thousands of rows, not hundreds of thousands.
--
-- 1. sales_metrics_lite: the hour and day rollups without region and channel
--    (category x payment method x status: ~160 rows per bucket instead of
--    ~3,000). Views that neither group nor filter by region or channel read
--    their whole hours and days here; the full sales_metrics still serves the
--    minute edges and any region/channel filter.
-- 2. customer_days: which customers ordered on which UTC day. Distinct
--    customers over whole days are counted here (one narrow row per customer
--    per day) instead of over every raw transaction; the edges of a range
--    still come from the raw rows.

CREATE TABLE sales_metrics_lite (
    grain          text          NOT NULL CHECK (grain IN ('hour', 'day')),
    bucket         timestamptz   NOT NULL,
    category       text          NOT NULL,
    payment_method text          NOT NULL,
    status         text          NOT NULL,
    orders         bigint        NOT NULL,
    units          bigint        NOT NULL,
    revenue        numeric(18,2) NOT NULL,
    discount       numeric(18,2) NOT NULL,
    PRIMARY KEY (grain, bucket, category, payment_method, status)
) WITH (fillfactor = 80);

INSERT INTO sales_metrics_lite (grain, bucket, category, payment_method, status, orders, units,
    revenue, discount)
SELECT grain, bucket, category, payment_method, status, sum(orders), sum(units), sum(revenue),
    sum(discount)
FROM sales_metrics WHERE grain IN ('hour', 'day')
GROUP BY 1, 2, 3, 4, 5;

CREATE TABLE customer_days (
    day         timestamptz NOT NULL,
    customer_id text        NOT NULL,
    PRIMARY KEY (day, customer_id)
);

INSERT INTO customer_days (day, customer_id)
SELECT DISTINCT date_trunc('day', occurred_at, 'UTC'), customer_id FROM transactions;
