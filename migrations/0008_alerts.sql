-- salespulse schema v8: alert history and silences.
--
-- `alert_events` keeps every change of an alert rule's state and every
-- notification (firing, repeated, resolved, no data, error), whether it
-- went out or was silenced. The evaluator restores each rule's state from
-- its latest row when it starts, so a restart neither forgets a firing
-- alert nor announces it again. `alert_silences` mutes a rule (or every
-- rule: '*') until a time; the state is still kept and recorded.

CREATE TABLE alert_events (
    id       bigserial   PRIMARY KEY,
    rule     text        NOT NULL,
    at       timestamptz NOT NULL,
    state    text        NOT NULL CHECK (state IN ('normal', 'pending', 'firing', 'resolved', 'no_data', 'error')),
    previous text        CHECK (previous IN ('normal', 'pending', 'firing', 'resolved', 'no_data', 'error')),
    since    timestamptz NOT NULL,
    value    float8,
    notified text        CHECK (notified IN ('firing', 'repeat', 'resolved', 'no_data', 'error')),
    silenced boolean     NOT NULL DEFAULT false,
    message  text        NOT NULL DEFAULT ''
);

CREATE INDEX alert_events_rule_at ON alert_events (rule, at DESC, id DESC);
CREATE INDEX alert_events_at ON alert_events (at DESC, id DESC);

CREATE TABLE alert_silences (
    id         bigserial   PRIMARY KEY,
    rule       text        NOT NULL,
    until      timestamptz NOT NULL,
    reason     text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX alert_silences_until ON alert_silences (until);
