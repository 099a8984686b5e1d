-- Issue #18, the web console: a browser's session. The cookie holds an
-- opaque random id; only its SHA-256 is stored, next to the SHA-256 of the
-- token it was opened with (the identity, its roles and tenants are looked
-- up in the tokens file on every request, so a token taken out of the file
-- ends its sessions). Several api processes share the table.
CREATE TABLE ui_session (
    id_sha256    text        PRIMARY KEY CHECK (length(id_sha256) = 64),
    token_sha256 text        NOT NULL CHECK (length(token_sha256) = 64),
    csrf         text        NOT NULL CHECK (length(csrf) = 64),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ui_session_by_age ON ui_session (created_at);
