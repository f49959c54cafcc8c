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

/// Adds keys (one transaction, one version step); keys already there are left as they are.
/// Returns the version the set is at after the change.
pub async fn insert_keys(pool: &AnyPool, records: &[&KeyRecord]) -> Result<i64, sqlx::Error> {
    let mut tx = pool.begin().await?;
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
    }
    let version = bump(&mut tx).await?;
    tx.commit().await?;
    Ok(version)
}

/// Removes the key with public id `id`: the version after the change, or `None` when there
/// is no such key.
pub async fn delete_key(pool: &AnyPool, id: &str) -> Result<Option<i64>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let removed = sqlx::query("DELETE FROM api_keys WHERE id = $1")
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let version = if removed > 0 {
        Some(bump(&mut tx).await?)
    } else {
        None
    };
    tx.commit().await?;
    Ok(version)
}

async fn bump(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<i64, sqlx::Error> {
    sqlx::query("UPDATE versions SET version = version + 1 WHERE scope = 'api_keys'")
        .execute(&mut **tx)
        .await?;
    sqlx::query("SELECT version FROM versions WHERE scope = 'api_keys'")
        .fetch_one(&mut **tx)
        .await?
        .try_get(0)
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
