//! Who a request comes from: the client's address (believing forwarding headers only from
//! trusted proxies) and its API key, tenant and tier.

mod api_keys;
mod client_ip;
pub mod jwt;
pub mod registry;

pub use api_keys::{digest, find, hex, ApiKeyStore, KeyDigest, KeyRecord, Lookup};
pub use client_ip::ClientIpResolver;
pub use registry::parse_digest;

use crate::config::Config;

/// Identity rules compiled from the config.
pub struct Identity {
    pub client_ip: ClientIpResolver,
    pub api_keys: ApiKeyStore,
}

impl Identity {
    pub fn build(config: &Config) -> Identity {
        Identity {
            client_ip: ClientIpResolver::new(&config.trusted_proxies, config.client_ip_header),
            api_keys: ApiKeyStore::from_config(&config.api_keys),
        }
    }
}
