-- salespulse schema v2.
--
-- 1. The rollups are kept at three grains (minute, hour, day), all written by
--    ingest in the same transaction as the raw rows. A query over a long range
--    reads whole days from the day grain and only its ragged edges from the
--    finer ones, so a dashboard over months reads thousands of rows, not
--    millions. Buckets are UTC.
-- 2. ingest_watermarks: per topic partition, a commit counter, the newest event
--    time written and a count of "late" commits (rows older than that partition's
--    newest event time minus one hour). The analytics cache derives its data
--    versions from this table, read in the same database as the data, so a
--    cached frame can never outlive the commit that changed it.

ALTER TABLE sales_metrics ADD COLUMN grain text NOT NULL DEFAULT 'minute'
    CHECK (grain IN ('minute', 'hour', 'day'));
ALTER TABLE sales_metrics DROP CONSTRAINT sales_metrics_pkey;
ALTER TABLE sales_metrics
    ADD PRIMARY KEY (grain, bucket, category, payment_method, status, region, channel);
ALTER TABLE sales_metrics ALTER COLUMN grain DROP DEFAULT;

INSERT INTO sales_metrics (grain, bucket, category, payment_method, status, region, channel,
    orders, units, revenue, discount)
SELECT g.grain, date_trunc(g.grain, m.bucket, 'UTC'), category, payment_method, status, region,
    channel, sum(orders), sum(units), sum(revenue), sum(discount)
FROM sales_metrics m CROSS JOIN (VALUES ('hour'), ('day')) AS g(grain)
WHERE m.grain = 'minute'
GROUP BY 1, 2, 3, 4, 5, 6, 7;

ALTER TABLE session_metrics ADD COLUMN grain text NOT NULL DEFAULT 'minute'
    CHECK (grain IN ('minute', 'hour', 'day'));
ALTER TABLE session_metrics DROP CONSTRAINT session_metrics_pkey;
ALTER TABLE session_metrics ADD PRIMARY KEY (grain, bucket, region, channel);
ALTER TABLE session_metrics ALTER COLUMN grain DROP DEFAULT;

INSERT INTO session_metrics (grain, bucket, region, channel, sessions, converted_sessions,
    orders, page_views)
SELECT g.grain, date_trunc(g.grain, m.bucket, 'UTC'), region, channel, sum(sessions),
    sum(converted_sessions), sum(orders), sum(page_views)
FROM session_metrics m CROSS JOIN (VALUES ('hour'), ('day')) AS g(grain)
WHERE m.grain = 'minute'
GROUP BY 1, 2, 3, 4;

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
