-- Other numbers (`rate`, `burst`, `limit`, JSON in `body`) for one tenant or one API key
-- on one policy; they beat the tier. Changes move the `policies` version, so nodes reload
-- policies and overrides together.
CREATE TABLE overrides (
    policy TEXT NOT NULL,
    subject TEXT NOT NULL,
    body TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (policy, subject)
);
