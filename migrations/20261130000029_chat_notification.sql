-- Issue #18, ChatOps: what the notifier posted (or gave up on), one row per
-- feed message, so a redelivered message posts nothing twice.
CREATE TABLE chat_notification (
    message_id uuid        PRIMARY KEY,
    case_id    uuid        NOT NULL,
    tenant     text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('gate_pending', 'parked', 'closed', 'rolled_back')),
    outcome    text        NOT NULL CHECK (outcome IN ('posted', 'failed')),
    error      text,
    attempts   integer     NOT NULL CHECK (attempts >= 1),
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX chat_notification_by_case ON chat_notification (case_id, at);
