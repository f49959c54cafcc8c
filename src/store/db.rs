//! The SQL behind the store, written once for SQLite and PostgreSQL (through sqlx's `Any`
//! driver, `$n` placeholders, portable types). Migrations are embedded and versioned.

use crate::identity::{KeyDigest, KeyRecord};
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The most any store call may take; the callers degrade or answer 503 after it.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

pub type Keys = HashMap<KeyDigest, Arc<KeyRecord>>;

/// Opens the store at `url` and brings its schema up to date.
pub async fn open(url: &str) -> Result<AnyPool, String> {
    sqlx::any::install_default_drivers();
    let url = match url.strip_prefix("sqlite:") {
        // Create the file on first start; keep the URL's own options otherwise.
        Some(_) if !url.contains("mode=") => {
            let sep = if url.contains('?') { '&' } else { '?' };
            format!("{url}{sep}mode=rwc")
        }
        _ => url.to_string(),
    };
    let pool = AnyPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(CALL_TIMEOUT)
        .connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    MIGRATIONS
        .run(&pool)
        .await
        .map_err(|e| format!("migrating the store: {e}"))?;
    Ok(pool)
}

/// The version of the registered-key set; it moves with every change.
pub async fn keys_version(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT version FROM versions WHERE scope = 'api_keys'")
        .fetch_one(pool)
        .await?
        .try_get(0)
}

/// Every registered key and the version they are at.
pub async fn load_keys(pool: &AnyPool) -> Result<(i64, Keys), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query("SELECT version FROM versions WHERE scope = 'api_keys'")
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    let rows = sqlx::query("SELECT digest, record FROM api_keys")
        .fetch_all(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut keys = HashMap::with_capacity(rows.len());
    for row in rows {
        let digest: String = row.try_get(0)?;
        let record: String = row.try_get(1)?;
        let (Some(digest), Ok(mut record)) = (
            crate::identity::parse_digest(&digest),
            serde_json::from_str::<KeyRecord>(&record),
        ) else {
            tracing::warn!(digest, "store: skipping an API key row that does not parse");
            continue;
        };
        record.digest = digest;
        keys.insert(digest, Arc::new(record));
    }
    Ok((version, keys))
}

/// One change, as the audit trail keeps it.
pub struct Change {
    pub actor: String,
    pub action: &'static str,
    pub object: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// One entry read back from the audit trail.
#[derive(Debug, serde::Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub object: String,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

/// Which audit entries to read: after `after_seq`, at or after `since_ms`, for `object`
/// (any when empty), at most `limit`, oldest first.
pub struct AuditQuery {
    pub after_seq: i64,
    pub since_ms: i64,
    pub object: String,
    pub limit: i64,
}

/// The PostgreSQL channel every change is announced on, so other nodes reload at once
/// instead of at their next version check.
pub const CHANNEL: &str = "tollgate_store";

/// Announces a change to `scope` on PostgreSQL, delivered when the transaction commits
/// (SQLite has no other process to tell).
async fn announce(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    scope: &str,
) -> Result<(), sqlx::Error> {
    if tx.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(scope.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The audit object name of an API key.
pub fn key_object(id: &str) -> String {
    format!("key:{id}")
}

/// Adds keys (one transaction, one version step), each with its audit entry by `actor`;
/// keys already there are left as they are. Returns the version the set is at after it.
pub async fn insert_keys(
    pool: &AnyPool,
    records: &[&KeyRecord],
    actor: &str,
    action: &'static str,
) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut changes = Vec::with_capacity(records.len());
    for record in records {
        let json = serde_json::to_string(record).map_err(|e| sqlx::Error::Encode(e.into()))?;
        sqlx::query(
            "INSERT INTO api_keys (digest, id, record, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (digest) DO NOTHING",
        )
        .bind(crate::identity::hex(&record.digest))
        .bind(record.id.clone())
        .bind(json)
        .bind(crate::clock::now_ms() as i64)
        .execute(&mut *tx)
        .await?;
        let change = Change {
            actor: actor.to_string(),
            action,
            object: key_object(&record.id),
            before: None,
            after: serde_json::to_value(record).ok(),
        };
        changes.push(change);
    }
    commit(tx, &changes, "api_keys").await
}

/// Removes the key with public id `id`, audited as `actor`'s: the version after the
/// change, or `None` when there is no such key.
pub async fn delete_key(pool: &AnyPool, id: &str, actor: &str) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before: Option<String> = sqlx::query("SELECT record FROM api_keys WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?
        .map(|row| row.try_get(0))
        .transpose()?;
    let Some(before) = before else {
        tx.rollback().await?;
        return Ok(None);
    };
    sqlx::query("DELETE FROM api_keys WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
    let change = Change {
        actor: actor.to_string(),
        action: "revoke",
        object: key_object(id),
        before: serde_json::from_str(&before).ok(),
        after: None,
    };
    let version = commit(tx, &[change], "api_keys").await?;
    Ok(Some(version))
}

/// Moves the counter `scope` of `versions` on by one and returns it.
async fn bump(tx: &mut sqlx::Transaction<'_, sqlx::Any>, scope: &str) -> Result<i64, sqlx::Error> {
    sqlx::query("UPDATE versions SET version = version + 1 WHERE scope = $1")
        .bind(scope.to_string())
        .execute(&mut **tx)
        .await?;
    sqlx::query("SELECT version FROM versions WHERE scope = $1")
        .bind(scope.to_string())
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)
}

/// Appends `change` to the audit trail, in the transaction that makes the change.
async fn audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    change: &Change,
) -> Result<(), sqlx::Error> {
    let seq = bump(tx, "audit").await?;
    let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
    sqlx::query(
        "INSERT INTO audit (seq, at_ms, actor, action, object, before_json, after_json) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(seq)
    .bind(crate::clock::now_ms() as i64)
    .bind(change.actor.clone())
    .bind(change.action.to_string())
    .bind(change.object.clone())
    .bind(json(&change.before))
    .bind(json(&change.after))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends a change to `scope`: its audit entries, the set's new version (returned), the
/// announcement to the other nodes, and the commit that makes all of it happen at once.
async fn commit(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    changes: &[Change],
    scope: &str,
) -> Result<i64, sqlx::Error> {
    for change in changes {
        audit(&mut tx, change).await?;
    }
    let version = bump(&mut tx, scope).await?;
    announce(&mut tx, scope).await?;
    tx.commit().await?;
    Ok(version)
}

/// The audit entries `query` asks for, oldest first.
pub async fn audit_entries(
    pool: &AnyPool,
    query: &AuditQuery,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, actor, action, object, before_json, after_json FROM audit \
         WHERE seq > $1 AND at_ms >= $2 AND ($3 = '' OR object = $3) ORDER BY seq LIMIT $4",
    )
    .bind(query.after_seq)
    .bind(query.since_ms)
    .bind(query.object.clone())
    .bind(query.limit)
    .fetch_all(pool)
    .await?;
    let parse = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
    rows.into_iter()
        .map(|row| {
            Ok(AuditEntry {
                seq: row.try_get(0)?,
                at_ms: row.try_get(1)?,
                actor: row.try_get(2)?,
                action: row.try_get(3)?,
                object: row.try_get(4)?,
                before: parse(row.try_get(5)?),
                after: parse(row.try_get(6)?),
            })
        })
        .collect()
}

pub async fn meta(pool: &AnyPool, name: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query("SELECT value FROM meta WHERE name = $1")
        .bind(name.to_string())
        .fetch_optional(pool)
        .await?
        .map(|row| row.try_get(0))
        .transpose()
}

pub async fn set_meta(pool: &AnyPool, name: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO meta (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(name.to_string())
    .bind(value.to_string())
    .execute(pool)
    .await
    .map(|_| ())
}

/// A runtime policy as the store keeps it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredPolicy {
    pub policy: crate::config::runtime::RuntimePolicy,
    /// Moves with every write: the ETag.
    pub revision: i64,
}

/// The audit object name of a policy.
pub fn policy_object(name: &str) -> String {
    format!("policy:{name}")
}

/// The runtime policies and the overrides, loaded and swapped in together.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicySet {
    pub policies: Vec<StoredPolicy>,
    pub overrides: Vec<crate::config::runtime::RuntimeOverride>,
}

/// The audit object name of an override.
pub fn override_object(policy: &str, subject: &str) -> String {
    format!("override:{policy}/{subject}")
}

/// Every runtime policy and override, and the version the set is at.
pub async fn load_policies(pool: &AnyPool) -> Result<(i64, PolicySet), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let version: i64 = sqlx::query("SELECT version FROM versions WHERE scope = 'policies'")
        .fetch_one(&mut *tx)
        .await?
        .try_get(0)?;
    let rows = sqlx::query("SELECT name, body, revision FROM policies ORDER BY name")
        .fetch_all(&mut *tx)
        .await?;
    let override_rows =
        sqlx::query("SELECT policy, subject, body FROM overrides ORDER BY policy, subject")
            .fetch_all(&mut *tx)
            .await?;
    tx.commit().await?;
    let mut overrides = Vec::with_capacity(override_rows.len());
    for row in override_rows {
        let policy: String = row.try_get(0)?;
        let subject: String = row.try_get(1)?;
        let body: String = row.try_get(2)?;
        match serde_json::from_str(&body) {
            Ok(numbers) => overrides.push(crate::config::runtime::RuntimeOverride {
                policy,
                subject,
                numbers,
            }),
            Err(_) => tracing::warn!(
                policy,
                subject,
                "store: skipping an override that does not parse"
            ),
        }
    }
    let mut policies = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.try_get(0)?;
        let body: String = row.try_get(1)?;
        let revision: i64 = row.try_get(2)?;
        match serde_json::from_str::<crate::config::runtime::RuntimePolicy>(&body) {
            Ok(policy) if policy.name == name => policies.push(StoredPolicy { policy, revision }),
            _ => tracing::warn!(name, "store: skipping a policy row that does not parse"),
        }
    }
    Ok((
        version,
        PolicySet {
            policies,
            overrides,
        },
    ))
}

/// Sets an override (created or replaced), audited as `actor`'s; the set's new version.
pub async fn put_override(
    pool: &AnyPool,
    o: &crate::config::runtime::RuntimeOverride,
    actor: &str,
) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before = override_body(&mut tx, &o.policy, &o.subject).await?;
    let body = serde_json::to_string(&o.numbers).map_err(|e| sqlx::Error::Encode(e.into()))?;
    sqlx::query(
        "INSERT INTO overrides (policy, subject, body, updated_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (policy, subject) DO UPDATE SET body = excluded.body, updated_ms = excluded.updated_ms",
    )
    .bind(o.policy.clone())
    .bind(o.subject.clone())
    .bind(body.clone())
    .bind(crate::clock::now_ms() as i64)
    .execute(&mut *tx)
    .await?;
    let change = Change {
        actor: actor.to_string(),
        action: if before.is_some() { "update" } else { "create" },
        object: override_object(&o.policy, &o.subject),
        before: before.and_then(|b| serde_json::from_str(&b).ok()),
        after: serde_json::from_str(&body).ok(),
    };
    commit(tx, &[change], "policies").await
}

/// Removes an override: the set's new version, or `None` when there was none.
pub async fn delete_override(
    pool: &AnyPool,
    policy: &str,
    subject: &str,
    actor: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before = override_body(&mut tx, policy, subject).await?;
    let Some(before) = before else {
        tx.rollback().await?;
        return Ok(None);
    };
    sqlx::query("DELETE FROM overrides WHERE policy = $1 AND subject = $2")
        .bind(policy.to_string())
        .bind(subject.to_string())
        .execute(&mut *tx)
        .await?;
    let change = Change {
        actor: actor.to_string(),
        action: "delete",
        object: override_object(policy, subject),
        before: serde_json::from_str(&before).ok(),
        after: None,
    };
    let version = commit(tx, &[change], "policies").await?;
    Ok(Some(version))
}

/// The version of the runtime policy set.
pub async fn policies_version(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    sqlx::query("SELECT version FROM versions WHERE scope = 'policies'")
        .fetch_one(pool)
        .await?
        .try_get(0)
}

/// What a conditional write found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Done: the policy's new revision and the set's new version.
    Done { revision: i64, version: i64 },
    /// `create` found the name taken.
    Exists,
    /// The policy is at another revision than the one the write named (or is gone).
    Stale { current: Option<i64> },
    /// Nothing by that name to update or delete.
    Missing,
}

/// A policy's stored body and revision, read in the transaction that changes it.
async fn policy_row(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    name: &str,
) -> Result<Option<(String, i64)>, sqlx::Error> {
    sqlx::query("SELECT body, revision FROM policies WHERE name = $1")
        .bind(name.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .transpose()
}

/// An override's stored numbers, read in the transaction that changes it.
async fn override_body(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    policy: &str,
    subject: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query("SELECT body FROM overrides WHERE policy = $1 AND subject = $2")
        .bind(policy.to_string())
        .bind(subject.to_string())
        .fetch_optional(&mut **tx)
        .await?
        .map(|row| row.try_get(0))
        .transpose()
}

/// Writes a policy. `expected`: `None` creates (refused if the name exists), `Some(None)`
/// creates or replaces whatever is there, `Some(Some(r))` replaces revision `r` only.
pub async fn put_policy(
    pool: &AnyPool,
    policy: &crate::config::runtime::RuntimePolicy,
    expected: Option<Option<i64>>,
    actor: &str,
) -> Result<Written, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before = policy_row(&mut tx, &policy.name).await?;
    let current = before.as_ref().map(|(_, r)| *r);
    match (expected, current) {
        (None, Some(_)) => return Ok(Written::Exists),
        (Some(Some(want)), current) if current != Some(want) => {
            return Ok(Written::Stale { current })
        }
        _ => {}
    }
    let revision = current.unwrap_or(0) + 1;
    let body = serde_json::to_string(policy).map_err(|e| sqlx::Error::Encode(e.into()))?;
    let now = crate::clock::now_ms() as i64;
    // Conditional on what was read, so that of two writers that read the same revision
    // (PostgreSQL runs them at once) the second changes nothing and is told so.
    let changed = if let Some(current) = current {
        sqlx::query(
            "UPDATE policies SET body = $1, revision = $2, updated_ms = $3 \
             WHERE name = $4 AND revision = $5",
        )
        .bind(body.clone())
        .bind(revision)
        .bind(now)
        .bind(policy.name.clone())
        .bind(current)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    } else {
        sqlx::query(
            "INSERT INTO policies (name, body, revision, updated_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(policy.name.clone())
        .bind(body.clone())
        .bind(revision)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
    };
    if changed == 0 {
        tx.rollback().await?;
        return Ok(match expected {
            None => Written::Exists,
            Some(_) => Written::Stale { current: None },
        });
    }
    let change = Change {
        actor: actor.to_string(),
        action: if current.is_some() {
            "update"
        } else {
            "create"
        },
        object: policy_object(&policy.name),
        before: before.and_then(|(b, _)| serde_json::from_str(&b).ok()),
        after: serde_json::from_str(&body).ok(),
    };
    let version = commit(tx, &[change], "policies").await?;
    Ok(Written::Done { revision, version })
}

/// Deletes a policy, at revision `expected` if given.
pub async fn delete_policy(
    pool: &AnyPool,
    name: &str,
    expected: Option<i64>,
    actor: &str,
) -> Result<Written, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let before = policy_row(&mut tx, name).await?;
    let Some((body, revision)) = before else {
        tx.rollback().await?;
        return Ok(Written::Missing);
    };
    if expected.is_some_and(|want| want != revision) {
        tx.rollback().await?;
        return Ok(Written::Stale {
            current: Some(revision),
        });
    }
    let deleted = sqlx::query("DELETE FROM policies WHERE name = $1 AND revision = $2")
        .bind(name.to_string())
        .bind(revision)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if deleted == 0 {
        tx.rollback().await?;
        return Ok(Written::Stale { current: None });
    }
    let mut changes = vec![Change {
        actor: actor.to_string(),
        action: "delete",
        object: policy_object(name),
        before: serde_json::from_str(&body).ok(),
        after: None,
    }];
    // Its overrides go with it, each audited: they would name a policy that is gone.
    let overrides = sqlx::query("SELECT subject, body FROM overrides WHERE policy = $1")
        .bind(name.to_string())
        .fetch_all(&mut *tx)
        .await?;
    for row in overrides {
        let (subject, body): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        changes.push(Change {
            actor: actor.to_string(),
            action: "delete",
            object: override_object(name, &subject),
            before: serde_json::from_str(&body).ok(),
            after: None,
        });
    }
    sqlx::query("DELETE FROM overrides WHERE policy = $1")
        .bind(name.to_string())
        .execute(&mut *tx)
        .await?;
    let version = commit(tx, &changes, "policies").await?;
    Ok(Written::Done {
        revision: revision + 1,
        version,
    })
}
