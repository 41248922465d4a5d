-- salespulse schema v2.
--
-- 1. The rollups are kept at three grains (minute, hour, day), one partition
--    each, all written by ingest in the same transaction as the raw rows. A query over a long range
--    reads whole days from the day grain and only its ragged edges from the
--    finer ones, so a dashboard over months reads thousands of rows, not
--    millions. Buckets are UTC.
-- 2. ingest_watermarks: per topic partition, a commit counter, the newest event
--    time written and a count of "late" commits (rows older than that partition's
--    newest event time minus one hour). The analytics cache derives its data
--    versions from this table, read in the same database as the data, so a
--    cached frame can never outlive the commit that changed it.

-- The rollups become tables partitioned by grain: a query of one grain reads
-- only that grain's rows (a seq scan of the day partition, not of everything).
ALTER TABLE sales_metrics RENAME TO sales_metrics_v1;
ALTER TABLE sales_metrics_v1 RENAME CONSTRAINT sales_metrics_pkey TO sales_metrics_v1_pkey;
CREATE TABLE sales_metrics (
    grain          text          NOT NULL CHECK (grain IN ('minute', 'hour', 'day')),
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
    PRIMARY KEY (grain, bucket, category, payment_method, status, region, channel)
) PARTITION BY LIST (grain);
CREATE TABLE sales_metrics_minute PARTITION OF sales_metrics FOR VALUES IN ('minute')
    WITH (fillfactor = 80);
CREATE TABLE sales_metrics_hour PARTITION OF sales_metrics FOR VALUES IN ('hour')
    WITH (fillfactor = 80);
CREATE TABLE sales_metrics_day PARTITION OF sales_metrics FOR VALUES IN ('day')
    WITH (fillfactor = 80);

INSERT INTO sales_metrics (grain, bucket, category, payment_method, status, region, channel,
    orders, units, revenue, discount)
SELECT g.grain, date_trunc(g.grain, m.bucket, 'UTC'), category, payment_method, status, region,
    channel, sum(orders), sum(units), sum(revenue), sum(discount)
FROM sales_metrics_v1 m CROSS JOIN (VALUES ('minute'), ('hour'), ('day')) AS g(grain)
GROUP BY 1, 2, 3, 4, 5, 6, 7;
DROP TABLE sales_metrics_v1;

ALTER TABLE session_metrics RENAME TO session_metrics_v1;
ALTER TABLE session_metrics_v1 RENAME CONSTRAINT session_metrics_pkey TO session_metrics_v1_pkey;
CREATE TABLE session_metrics (
    grain              text        NOT NULL CHECK (grain IN ('minute', 'hour', 'day')),
    bucket             timestamptz NOT NULL,
    region             text        NOT NULL,
    channel            text        NOT NULL,
    sessions           bigint      NOT NULL,
    converted_sessions bigint      NOT NULL,
    orders             bigint      NOT NULL,
    page_views         bigint      NOT NULL,
    PRIMARY KEY (grain, bucket, region, channel)
) PARTITION BY LIST (grain);
CREATE TABLE session_metrics_minute PARTITION OF session_metrics FOR VALUES IN ('minute')
    WITH (fillfactor = 80);
CREATE TABLE session_metrics_hour PARTITION OF session_metrics FOR VALUES IN ('hour')
    WITH (fillfactor = 80);
CREATE TABLE session_metrics_day PARTITION OF session_metrics FOR VALUES IN ('day')
    WITH (fillfactor = 80);

INSERT INTO session_metrics (grain, bucket, region, channel, sessions, converted_sessions,
    orders, page_views)
SELECT g.grain, date_trunc(g.grain, m.bucket, 'UTC'), region, channel, sum(sessions),
    sum(converted_sessions), sum(orders), sum(page_views)
FROM session_metrics_v1 m CROSS JOIN (VALUES ('minute'), ('hour'), ('day')) AS g(grain)
GROUP BY 1, 2, 3, 4;
DROP TABLE session_metrics_v1;

CREATE TABLE ingest_watermarks (
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    -- commits that inserted at least one row
    commits        bigint      NOT NULL,
    -- commits that inserted a row older than max_event_at - 1 hour (the
    -- partition's first commit counts as late: it may land anywhere in time)
    late_commits   bigint      NOT NULL,
    -- newest bucket time written (sale occurred_at, session started_at)
    max_event_at   timestamptz NOT NULL,
    -- oldest bucket time of the last commit
    last_min_at    timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
) WITH (fillfactor = 50);

-- Data that existed before this migration counts as one late commit.
INSERT INTO ingest_watermarks (topic, partition, commits, late_commits, max_event_at, last_min_at)
SELECT 'migration', -1, 1, 1, max(t), min(t)
FROM (SELECT max(occurred_at) AS t FROM transactions
      UNION ALL SELECT min(occurred_at) FROM transactions
      UNION ALL SELECT max(started_at) FROM sessions
      UNION ALL SELECT min(started_at) FROM sessions) AS x
HAVING max(t) IS NOT NULL;

-- Which database this is: part of every cache key, so that several databases
-- can share one Redis without reading each other's frames.
CREATE TABLE database_identity (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO database_identity DEFAULT VALUES;
