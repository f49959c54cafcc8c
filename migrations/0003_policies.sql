-- Rate limit policies created through the admin API, in the YAML policy schema plus the
-- routes that apply them (`body`, JSON). `revision` is the policy's ETag: every write
-- moves it, and a write that names an older one is refused.
CREATE TABLE policies (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    revision BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
INSERT INTO versions (scope, version) VALUES ('policies', 0);
