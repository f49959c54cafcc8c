-- Registered API keys, by digest: the secret itself is never stored.
CREATE TABLE api_keys (
    digest TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

-- One row per kind of object; every change bumps its version, so nodes reload a set only
-- when it changed.
CREATE TABLE versions (
    scope TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO versions (scope, version) VALUES ('api_keys', 0);

-- One-off facts about this store, such as whether keys were imported from Redis.
CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
