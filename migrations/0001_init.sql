-- salespulse schema v1.
-- Tables updated in place (upserts) leave room in each page (fillfactor) so
-- that updates stay HOT and do not touch indexes.
-- Money is numeric(12,2) per line and numeric(18,2) in aggregates, in the
-- shop's currency (transactions.currency). Timestamps are timestamptz (UTC).

CREATE TABLE transactions (
    transaction_id  uuid PRIMARY KEY,
    occurred_at     timestamptz   NOT NULL,
    customer_id     text          NOT NULL,
    session_id      text          NOT NULL,
    product_id      text          NOT NULL,
    category        text          NOT NULL,
    quantity        integer       NOT NULL CHECK (quantity > 0),
    unit_price      numeric(12,2) NOT NULL CHECK (unit_price >= 0),
    discount        numeric(12,2) NOT NULL DEFAULT 0 CHECK (discount >= 0),
    total_amount    numeric(12,2) NOT NULL CHECK (total_amount >= 0),
    currency        char(3)       NOT NULL,
    payment_method  text          NOT NULL,
    status          text          NOT NULL CHECK (status IN ('completed', 'pending', 'failed', 'refunded')),
    region          text          NOT NULL,
    country         char(2)       NOT NULL,
    channel         text          NOT NULL CHECK (channel IN ('web', 'mobile', 'store')),
    kafka_partition integer,
    kafka_offset    bigint,
    ingested_at     timestamptz   NOT NULL DEFAULT now()
);

-- The seed architecture's indexes.
CREATE INDEX transactions_occurred_at_idx        ON transactions (occurred_at);
CREATE INDEX transactions_customer_id_idx        ON transactions (customer_id);
CREATE INDEX transactions_product_id_idx         ON transactions (product_id);
CREATE INDEX transactions_status_occurred_at_idx ON transactions (status, occurred_at);

-- One row per shopping session, converted or not (conversion = orders / sessions).
CREATE TABLE sessions (
    session_id      text        PRIMARY KEY,
    customer_id     text        NOT NULL,
    started_at      timestamptz NOT NULL,
    ended_at        timestamptz NOT NULL,
    region          text        NOT NULL,
    country         char(2)     NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('web', 'mobile', 'store')),
    page_views      integer     NOT NULL CHECK (page_views >= 0),
    orders          integer     NOT NULL CHECK (orders >= 0),
    kafka_partition integer,
    kafka_offset    bigint,
    ingested_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_started_at_idx ON sessions (started_at);
CREATE INDEX sessions_customer_id_idx ON sessions (customer_id);

CREATE TABLE customers (
    customer_id      text          PRIMARY KEY,
    region           text          NOT NULL,
    country          char(2)       NOT NULL,
    first_seen       timestamptz   NOT NULL,
    last_seen        timestamptz   NOT NULL,
    sessions         bigint        NOT NULL DEFAULT 0,
    orders           bigint        NOT NULL DEFAULT 0,
    completed_orders bigint        NOT NULL DEFAULT 0,
    units            bigint        NOT NULL DEFAULT 0,
    -- lifetime value: sum of completed orders
    total_spent      numeric(18,2) NOT NULL DEFAULT 0
) WITH (fillfactor = 80);

CREATE TABLE products (
    product_id  text          PRIMARY KEY,
    name        text          NOT NULL,
    category    text          NOT NULL,
    list_price  numeric(12,2) NOT NULL,
    first_seen  timestamptz   NOT NULL,
    last_seen   timestamptz   NOT NULL,
    orders      bigint        NOT NULL DEFAULT 0,
    units       bigint        NOT NULL DEFAULT 0,
    -- revenue: sum of completed orders
    revenue     numeric(18,2) NOT NULL DEFAULT 0
) WITH (fillfactor = 80);
CREATE INDEX products_category_idx ON products (category);

-- Per-minute rollup of transactions. Revenue and units are kept per status so
-- that readers choose what counts (completed, net of refunds, ...).
CREATE TABLE sales_metrics (
    bucket         timestamptz   NOT NULL,
    category       text          NOT NULL,
    payment_method text          NOT NULL,
    status         text          NOT NULL,
    region         text          NOT NULL,
    channel        text          NOT NULL,
    orders         bigint        NOT NULL,
    units          bigint        NOT NULL,
    revenue        numeric(18,2) NOT NULL,
    discount       numeric(18,2) NOT NULL,
    PRIMARY KEY (bucket, category, payment_method, status, region, channel)
) WITH (fillfactor = 80);

-- Per-minute rollup of sessions (by session start).
CREATE TABLE session_metrics (
    bucket             timestamptz NOT NULL,
    region             text        NOT NULL,
    channel            text        NOT NULL,
    sessions           bigint      NOT NULL,
    converted_sessions bigint      NOT NULL,
    orders             bigint      NOT NULL,
    page_views         bigint      NOT NULL,
    PRIMARY KEY (bucket, region, channel)
) WITH (fillfactor = 80);

-- Ingest progress, written in the same transaction as the rows it covers:
-- the authority on where each partition resumes.
CREATE TABLE ingest_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
) WITH (fillfactor = 50);
