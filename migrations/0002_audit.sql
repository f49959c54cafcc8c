-- Every change to what the store holds, in the order it happened: who made it, what it
-- did to which object, and the object's public fields before and after (never a secret).
CREATE TABLE audit (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    before_json TEXT,
    after_json TEXT
);
CREATE INDEX audit_by_object ON audit (object, seq);
CREATE INDEX audit_by_time ON audit (at_ms);

-- The audit's sequence: a row lock in PostgreSQL orders concurrent writers, and the same
-- SQL works on SQLite (which has no shared sequence syntax with PostgreSQL).
INSERT INTO versions (scope, version) VALUES ('audit', 0);
