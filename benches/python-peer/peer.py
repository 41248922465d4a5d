"""The original design of salespulse, built in Python, as a reference to
measure salespulse against (benches/python-peer/run). Not part of the product.

  producer: confluent-kafka, acks=all, key = customer_id, one event per
            message from an ndjson file (`salespulse generate` output)
  consumer: confluent-kafka in a consumer group, batches of 500, psycopg2
            `execute_values ... ON CONFLICT DO NOTHING` into an 11-column
            `transactions` table with the seed architecture's indexes (no
            rollups, no sessions table), then the offsets (async commit)

    python3 peer.py schema  DATABASE_URL
    python3 peer.py topic   BROKERS TOPIC PARTITIONS
    python3 peer.py produce BROKERS TOPIC FILE
    python3 peer.py consume BROKERS TOPIC DATABASE_URL EXPECTED_MESSAGES [batch|poll]

The consumer reads with `consume(500)` (batch, the default) or one `poll()`
per message (poll, the textbook loop); both write batches of 500.
"""
import json
import sys
import time

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    transaction_id uuid PRIMARY KEY,
    "timestamp"    timestamptz NOT NULL,
    customer_id    text NOT NULL,
    product_id     text NOT NULL,
    category       text NOT NULL,
    quantity       integer NOT NULL,
    unit_price     numeric(12,2) NOT NULL,
    total_amount   numeric(12,2) NOT NULL,
    payment_method text NOT NULL,
    status         text NOT NULL,
    region         text NOT NULL
);
CREATE INDEX IF NOT EXISTS transactions_timestamp_idx ON transactions ("timestamp");
CREATE INDEX IF NOT EXISTS transactions_customer_idx ON transactions (customer_id);
CREATE INDEX IF NOT EXISTS transactions_product_idx ON transactions (product_id);
CREATE INDEX IF NOT EXISTS transactions_status_ts_idx ON transactions (status, "timestamp");
"""

INSERT = (
    'INSERT INTO transactions (transaction_id, "timestamp", customer_id, product_id, '
    "category, quantity, unit_price, total_amount, payment_method, status, region) "
    "VALUES %s ON CONFLICT (transaction_id) DO NOTHING"
)

BATCH = 500


def schema(url):
    import psycopg2

    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(SCHEMA)


def topic(brokers, name, partitions):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    for f in admin.create_topics([NewTopic(name, int(partitions), 1)]).values():
        f.result(30)


def produce(brokers, topic, path):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": brokers, "acks": "all", "enable.idempotence": True})
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    n = 0
    with open(path, "rb") as f:
        for line in f:
            line = line.rstrip(b"\n")
            if not line:
                continue
            key = json.loads(line)["customer_id"].encode()
            while True:
                try:
                    p.produce(topic, value=line, key=key, on_delivery=report)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
            n += 1
    p.flush()
    if failed:
        sys.exit(f"{len(failed)} deliveries failed: {failed[0]}")
    print(json.dumps({"produced": n}))


def consume(brokers, topic, url, expected, mode="batch"):
    import psycopg2
    from psycopg2.extras import execute_values
    from confluent_kafka import Consumer

    c = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": "python-peer",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    c.subscribe([topic])
    conn = psycopg2.connect(url)
    seen = stored = 0
    deadline = time.monotonic() + 3600
    per_message = mode == "poll"
    while seen < expected and time.monotonic() < deadline:
        if per_message:
            # The textbook loop: one poll per message, a batch of 500.
            msgs = []
            while len(msgs) < BATCH and seen + len(msgs) < expected:
                m = c.poll(0.1)
                if m is None:
                    break
                msgs.append(m)
        else:
            msgs = c.consume(num_messages=BATCH, timeout=1.0)
        rows = []
        for m in msgs:
            if m.error():
                continue
            seen += 1
            e = json.loads(m.value())
            if e.get("type") != "sale":
                continue
            rows.append(
                (
                    e["transaction_id"],
                    e["occurred_at"],
                    e["customer_id"],
                    e["product_id"],
                    e["category"],
                    e["quantity"],
                    e["unit_price"],
                    e["total_amount"],
                    e["payment_method"],
                    e["status"],
                    e["region"],
                )
            )
        if rows:
            with conn.cursor() as cur:
                execute_values(cur, INSERT, rows, page_size=BATCH)
            stored += len(rows)
        conn.commit()
        if msgs:
            c.commit(asynchronous=True)
    c.close()
    conn.close()
    print(json.dumps({"consumed": seen, "sales": stored}))
    if seen < expected:
        sys.exit(f"consumed {seen} of {expected} messages within an hour")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "schema":
        schema(*args)
    elif cmd == "topic":
        topic(*args)
    elif cmd == "produce":
        produce(*args)
    elif cmd == "consume":
        consume(args[0], args[1], args[2], int(args[3]), *args[4:])
    else:
        sys.exit(__doc__)
