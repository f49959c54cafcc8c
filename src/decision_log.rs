//! Writes each client's recent decisions to Redis capped lists, in batches, off the request
//! path: `{prefix}:log:{client}` (and `{prefix}:log:key:{id}` for API keys) keep the last
//! `max_per_client` entries and expire after `ttl` of quiet.
//!
//! A write groups its batch by list and keeps, per list, only the newest `max_per_client`
//! records (the trim would drop the others anyway), so only those are formatted. Each list
//! then costs one `LPUSH` with all its values, one `LTRIM` and one `PEXPIRE`, all in one
//! pipelined round trip.

use crate::decisions::{DecisionHub, Entry, Names, Record};
use crate::gateway::SharedGateway;
use crate::limit::RedisLink;
use crate::redis_store::Connection;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub fn list_key(prefix: &str, client: &str) -> String {
    format!("{prefix}:log:{client}")
}

/// The list a record goes to: its client's, and its API key's if it had one.
#[derive(Hash, PartialEq, Eq)]
enum List<'a> {
    Client(IpAddr),
    Key(&'a str),
}

/// Per list, the indexes into the batch of the records it keeps, oldest first.
fn kept_per_list(batch: &[Record], max: usize) -> Vec<(List<'_>, Vec<usize>)> {
    let mut lists: HashMap<List<'_>, Vec<usize>> = HashMap::new();
    // Newest first, so each list stops at `max` with the newest it had.
    for (i, r) in batch.iter().enumerate().rev() {
        let client = lists.entry(List::Client(r.client)).or_default();
        if client.len() < max {
            client.push(i);
        }
        if let Some(key) = &r.key {
            let key = lists.entry(List::Key(&key.id)).or_default();
            if key.len() < max {
                key.push(i);
            }
        }
    }
    lists
        .into_iter()
        .map(|(list, mut kept)| {
            kept.reverse();
            (list, kept)
        })
        .collect()
}

pub struct LogWriter {
    gateway: SharedGateway,
    hub: Arc<DecisionHub>,
    /// The log's own connection, and the link it belongs to. A write of a thousand values
    /// on the shared connection would hold up the sync's next round trip behind it (and
    /// with it the leases of every node's hot keys); on a connection of its own Redis
    /// interleaves the two.
    connection: Mutex<Option<(Arc<RedisLink>, Connection)>>,
}

impl LogWriter {
    pub fn new(gateway: SharedGateway, hub: Arc<DecisionHub>) -> Self {
        LogWriter {
            gateway,
            hub,
            connection: Mutex::new(None),
        }
    }

    async fn connection(&self, link: &Arc<RedisLink>) -> Option<Connection> {
        let cached = self
            .connection
            .lock()
            .as_ref()
            .filter(|(l, _)| Arc::ptr_eq(l, link))
            .map(|(_, c)| c.clone());
        if cached.is_some() {
            return cached;
        }
        let connection = link.dedicated_connection().await.ok()?;
        *self.connection.lock() = Some((link.clone(), connection.clone()));
        Some(connection)
    }

    pub async fn write(&self, batch: &[Record]) {
        let gateway = self.gateway.load_full();
        let settings = &gateway.config.admin.decision_log;
        let Some(link) = gateway.redis.as_ref() else {
            self.hub.count_dropped(batch.len() as u64);
            return;
        };
        let connection = match link.is_up() {
            true => self.connection(link).await,
            false => None,
        };
        let Some(connection) = connection else {
            self.hub.count_dropped(batch.len() as u64);
            return;
        };
        let prefix = &link.config.key_prefix;
        let names = self.hub.names();
        let pipe = pipeline(
            batch,
            &names,
            prefix,
            settings.max_per_client,
            settings.ttl.as_millis() as u64,
        );
        // Clients' lists are in many slots: on a cluster the store splits the batch per
        // master, one pipeline each.
        let deadline = Duration::from_secs(2);
        let answers = link.store().run(&connection, &pipe, deadline, &[]).await;
        if let Some(Err(e)) = answers.iter().find(|a| a.is_err()) {
            tracing::debug!("decision log write failed: {e}");
            *self.connection.lock() = None; // reconnect for the next write
            self.hub.count_dropped(batch.len() as u64);
            link.metrics()
                .redis_errors
                .with_label_values(&["decision_log"])
                .inc();
        }
    }
}

/// The commands that write `batch` (oldest first) into its lists.
fn pipeline(
    batch: &[Record],
    names: &Names,
    prefix: &str,
    max_per_client: usize,
    ttl_ms: u64,
) -> redis::Pipeline {
    let lists = kept_per_list(batch, max_per_client);
    // A record in both its client's and its key's list is formatted once.
    let mut json: Vec<Option<String>> = vec![None; batch.len()];
    let mut pipe = redis::pipe();
    for (list, kept) in &lists {
        let key = match list {
            List::Client(ip) => list_key(prefix, &ip.to_string()),
            List::Key(id) => list_key(prefix, &format!("key:{id}")),
        };
        let mut lpush = redis::cmd("LPUSH");
        lpush.arg(&key);
        for &i in kept {
            let text = json[i].get_or_insert_with(|| {
                Entry::of(&batch[i], names)
                    .map(|e| e.to_json())
                    .unwrap_or_default()
            });
            lpush.arg(text.as_str());
        }
        pipe.add_command(lpush).ignore();
        pipe.cmd("LTRIM")
            .arg(&key)
            .arg(0)
            .arg(max_per_client as i64 - 1)
            .ignore();
        pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
    }
    pipe
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decisions::record::{InlineText, Limits, RequestId, Verb};
    use crate::decisions::Kind;

    fn record(client: [u8; 4], n: u64) -> Record {
        Record {
            unix_ms: n,
            request_id: RequestId::ours(n as u128),
            client: IpAddr::from(client),
            key: None,
            user: None,
            route: 0,
            status: 200,
            kind: Kind::Allowed,
            method: Verb::Get,
            limits: Some(Limits::new(
                None,
                crate::limit::Outcome::Allowed.into(),
                Some(n),
            )),
            path: InlineText::new(&format!("/a/{n}")),
        }
    }

    #[test]
    fn each_list_keeps_its_newest_records_in_order() {
        let batch: Vec<Record> = (0..30)
            .map(|n| {
                record(
                    if n % 3 == 0 {
                        [10, 0, 0, 1]
                    } else {
                        [10, 0, 0, 2]
                    },
                    n,
                )
            })
            .collect();
        let lists = kept_per_list(&batch, 5);
        let of = |ip: [u8; 4]| {
            lists
                .iter()
                .find(|(l, _)| *l == List::Client(IpAddr::from(ip)))
                .map(|(_, kept)| kept.iter().map(|&i| batch[i].unix_ms).collect::<Vec<_>>())
                .unwrap()
        };
        assert_eq!(of([10, 0, 0, 1]), vec![15, 18, 21, 24, 27]);
        assert_eq!(
            of([10, 0, 0, 2]),
            vec![22, 23, 25, 26, 28, 29][1..].to_vec()
        );
    }
}
