//! Building the Redis client from the config: URL, a password from the environment, and
//! TLS with the operator's own CA and client certificate.

use crate::config::limits::{RedisConfig, RedisTlsConfig};
use redis::{ClientTlsConfig, IntoConnectionInfo, TlsCertificates};

/// The client for `config`, or a message naming the key that is wrong.
pub fn build(config: &RedisConfig) -> Result<redis::Client, (&'static str, String)> {
    let mut info = config.url.as_str().into_connection_info().map_err(|e| {
        (
            "redis.url",
            format!("`{}` is not a Redis URL: {e}", redacted_url(config)),
        )
    })?;
    if let Some(var) = &config.password_env {
        match std::env::var(var) {
            Ok(password) if !password.is_empty() => {
                info.redis.password = Some(password);
            }
            _ => {
                return Err((
                    "redis.password_env",
                    format!("the environment variable `{var}` is not set"),
                ))
            }
        }
    }
    let tls_url = config.url.starts_with("rediss://");
    match (&config.tls, tls_url) {
        (Some(_), false) => Err((
            "redis.tls",
            "certificates are only used with a rediss:// URL".to_string(),
        )),
        (Some(tls), true) => redis::Client::build_with_tls(info, certificates(tls)?)
            .map_err(|e| ("redis.tls", e.to_string())),
        (None, _) => redis::Client::open(info).map_err(|e| ("redis.url", e.to_string())),
    }
}

fn certificates(tls: &RedisTlsConfig) -> Result<TlsCertificates, (&'static str, String)> {
    let read = |key: &'static str, path: &Option<String>| -> Result<Option<Vec<u8>>, _> {
        path.as_ref()
            .map(|p| std::fs::read(p).map_err(|e| (key, format!("cannot read `{p}`: {e}"))))
            .transpose()
    };
    let root_cert = read("redis.tls.ca_file", &tls.ca_file)?;
    let client_tls = match (
        read("redis.tls.cert_file", &tls.cert_file)?,
        read("redis.tls.key_file", &tls.key_file)?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(ClientTlsConfig {
            client_cert,
            client_key,
        }),
        (None, None) => None,
        _ => {
            return Err((
                "redis.tls",
                "cert_file and key_file go together".to_string(),
            ))
        }
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

fn redacted_url(config: &RedisConfig) -> String {
    super::link::redacted(&config.url)
}
