-- The management API's endpoints, their secrets (sealed) and the tenants' data keys.

-- One data key per tenant (32 random bytes), AES-256-GCM-wrapped by the master key
-- (`master_id` names which, so a rotation can tell what is left to re-wrap).
CREATE TABLE tenant_keys (
    tenant TEXT PRIMARY KEY,
    wrapped TEXT NOT NULL,
    master_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- An endpoint created through the API: `spec` is its JSON (the keys of an endpoints file's
-- entry, without secrets). Its deliveries name it by (tenant, name), like a YAML one.
CREATE TABLE api_endpoints (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (tenant, name)
);

-- Its signing secrets, sealed under the tenant's data key; a rotated-out one signs beside
-- the new one until `expires_at`.
CREATE TABLE endpoint_secrets (
    id TEXT PRIMARY KEY,
    endpoint_id TEXT NOT NULL,
    sealed TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT
);
CREATE INDEX endpoint_secrets_by_endpoint ON endpoint_secrets (endpoint_id);

-- Bumped by every change of the above: nodes poll it and reload what changed.
CREATE TABLE catalog_version (
    id BIGINT PRIMARY KEY,
    version BIGINT NOT NULL
);
INSERT INTO catalog_version (id, version) VALUES (1, 0);
