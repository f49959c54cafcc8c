//! What the `redis` section says about reaching Redis: one of three shapes (one server, a
//! Redis Cluster, a Sentinel-watched master), the credentials and certificates they share,
//! turned into redis-rs connection data. Opening connections is the counter store's job
//! (`crate::redis_store`); config only checks that the section makes sense, so `tollgate
//! check` and the running proxy reject the same things.

use super::limits::{RedisConfig, RedisTlsConfig};
use redis::{
    ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo,
    TlsCertificates,
};

/// Where Redis is and how to log in, in redis-rs terms.
#[derive(Clone)]
pub struct Endpoints {
    pub shape: Shape,
    /// Login and database for every data node (the master of a Sentinel set included).
    pub redis: RedisConnectionInfo,
    /// Whether data nodes (and sentinels) speak TLS.
    pub tls: bool,
    /// The operator's CA and client certificate, when `redis.tls` names them.
    pub certificates: Option<TlsCertificates>,
}

#[derive(Clone)]
pub enum Shape {
    /// One server (`redis.url`).
    Single(ConnectionInfo),
    /// Seed nodes of a Redis Cluster (`redis.cluster`); the rest is discovered.
    Cluster(Vec<ConnectionInfo>),
    /// Sentinels to ask for the master named `master` (`redis.sentinel`).
    Sentinel {
        master: String,
        sentinels: Vec<ConnectionAddr>,
    },
}

/// A problem with the section: the YAML path of the setting and why.
pub type Problem = (String, String);

/// The endpoints `config` describes, or the first setting that is wrong.
pub fn endpoints(config: &RedisConfig) -> Result<Endpoints, Problem> {
    let problem = |key: &str, why: String| (key.to_string(), why);
    let given = [
        config.url.is_some(),
        config.cluster.is_some(),
        config.sentinel.is_some(),
    ];
    match given.iter().filter(|g| **g).count() {
        0 => {
            return Err(problem(
                "redis",
                "give one of `url` (one server), `cluster` (seed nodes) or `sentinel` (master name and sentinels)".into(),
            ))
        }
        1 => {}
        _ => {
            let key = if config.url.is_some() {
                if config.cluster.is_some() {
                    "redis.cluster"
                } else {
                    "redis.sentinel"
                }
            } else {
                "redis.sentinel"
            };
            return Err(problem(
                key,
                "`url`, `cluster` and `sentinel` are three ways to reach Redis: give only one"
                    .into(),
            ));
        }
    }
    let password = match &config.password_env {
        Some(var) => match std::env::var(var) {
            Ok(password) if !password.is_empty() => Some(password),
            _ => {
                return Err(problem(
                    "redis.password_env",
                    format!("the environment variable `{var}` is not set"),
                ))
            }
        },
        None => None,
    };
    let (shape, mut redis, tls) = if let Some(url) = &config.url {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(problem(
                "redis.url",
                format!(
                    "`{}` must start with redis:// or rediss://",
                    redact_url(url)
                ),
            ));
        }
        let info = url.as_str().into_connection_info().map_err(|e| {
            problem(
                "redis.url",
                format!("`{}` is not a Redis URL: {e}", redact_url(url)),
            )
        })?;
        let tls = url.starts_with("rediss://");
        if config.tls.is_some() && !tls {
            return Err(problem(
                "redis.tls",
                "certificates are only used with a rediss:// URL".into(),
            ));
        }
        if config.user.is_some() && info.redis.username.is_some() {
            return Err(problem(
                "redis.user",
                "the URL already names a user: give it in one place".into(),
            ));
        }
        let redis = info.redis.clone();
        (Shape::Single(info), redis, tls)
    } else {
        // Cluster and Sentinel addresses carry no scheme: TLS is on when `tls` is given.
        let tls = config.tls.is_some();
        if let Some(seeds) = &config.cluster {
            let addrs = addresses("redis.cluster", seeds, tls)?;
            let infos = addrs
                .into_iter()
                .map(|addr| ConnectionInfo {
                    addr,
                    redis: RedisConnectionInfo::default(),
                })
                .collect();
            (Shape::Cluster(infos), RedisConnectionInfo::default(), tls)
        } else if let Some(sentinel) = &config.sentinel {
            if sentinel.master.trim().is_empty() {
                return Err(problem(
                    "redis.sentinel.master",
                    "name the master the sentinels watch (their `sentinel monitor NAME ...`)"
                        .into(),
                ));
            }
            let sentinels = addresses("redis.sentinel.nodes", &sentinel.nodes, tls)?;
            (
                Shape::Sentinel {
                    master: sentinel.master.clone(),
                    sentinels,
                },
                RedisConnectionInfo {
                    db: sentinel.db,
                    ..RedisConnectionInfo::default()
                },
                tls,
            )
        } else {
            return Err(problem("redis", "no shape given".into()));
        }
    };
    let certificates = config.tls.as_ref().map(certificates).transpose()?;
    if let Some(user) = &config.user {
        if user.is_empty() {
            return Err(problem("redis.user", "must not be empty".into()));
        }
        redis.username = Some(user.clone());
    }
    if password.is_some() {
        redis.password = password;
    }
    let shape = match shape {
        Shape::Single(mut info) => {
            info.redis = redis.clone();
            Shape::Single(info)
        }
        Shape::Cluster(infos) => Shape::Cluster(
            infos
                .into_iter()
                .map(|info| ConnectionInfo {
                    redis: redis.clone(),
                    ..info
                })
                .collect(),
        ),
        other => other,
    };
    Ok(Endpoints {
        shape,
        redis,
        tls,
        certificates,
    })
}

/// `host:port` entries of a list, each with its own located error.
fn addresses(key: &str, list: &[String], tls: bool) -> Result<Vec<ConnectionAddr>, Problem> {
    if list.is_empty() {
        return Err((key.to_string(), "must name at least one host:port".into()));
    }
    let mut out: Vec<ConnectionAddr> = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let at = format!("{key}[{i}]");
        let addr = node_addr(entry.trim(), tls).ok_or_else(|| {
            (
                at.clone(),
                format!("`{entry}` is not host:port (for example 10.0.0.5:6379)"),
            )
        })?;
        if out.iter().any(|a| a.to_string() == addr.to_string()) {
            return Err((at, format!("`{entry}` is listed twice")));
        }
        out.push(addr);
    }
    Ok(out)
}

/// `host:port`, `[v6]:port`; the port must be 1–65535.
/// The address of one Redis node, `host:port` or `[v6]:port`, over TLS when `tls`.
pub fn node_addr(text: &str, tls: bool) -> Option<ConnectionAddr> {
    let (host, port) = split_host_port(text)?;
    Some(if tls {
        ConnectionAddr::TcpTls {
            host,
            port,
            insecure: false,
            tls_params: None,
        }
    } else {
        ConnectionAddr::Tcp(host, port)
    })
}

fn split_host_port(text: &str) -> Option<(String, u16)> {
    let (host, port) = text.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port: u16 = port.parse().ok().filter(|p| *p > 0)?;
    let plain_name = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_');
    if host.is_empty() || !(plain_name || host.parse::<std::net::IpAddr>().is_ok()) {
        return None;
    }
    Some((host.to_string(), port))
}

fn certificates(tls: &RedisTlsConfig) -> Result<TlsCertificates, Problem> {
    let read = |key: &str, path: &Option<String>| -> Result<Option<Vec<u8>>, Problem> {
        path.as_ref()
            .map(|p| {
                std::fs::read(p).map_err(|e| (key.to_string(), format!("cannot read `{p}`: {e}")))
            })
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
                "redis.tls".into(),
                "cert_file and key_file go together".into(),
            ))
        }
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// The URL without its password, for logs and the admin API.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                "***".into()
            };
            format!("{}{shown}{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl RedisConfig {
    /// Where Redis is, without secrets: the URL redacted, or the shape and its addresses.
    pub fn describe(&self) -> String {
        if let Some(url) = &self.url {
            redact_url(url)
        } else if let Some(seeds) = &self.cluster {
            format!("cluster {}", seeds.join(","))
        } else if let Some(s) = &self.sentinel {
            format!("sentinel master {} via {}", s.master, s.nodes.join(","))
        } else {
            "none".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(yaml: &str) -> RedisConfig {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn error(yaml: &str) -> Problem {
        endpoints(&section(yaml)).err().unwrap()
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redact_url("redis://:secret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("rediss://user:pw@h:1"), "rediss://user:***@h:1");
        assert_eq!(redact_url("redis://token@h:1"), "redis://***@h:1");
    }

    #[test]
    fn three_shapes_parse() {
        let single = endpoints(&section("url: redis://u:p@h:7/2")).unwrap();
        assert!(matches!(single.shape, Shape::Single(_)));
        assert_eq!(single.redis.db, 2);
        let cluster = endpoints(&section(
            "cluster: [10.0.0.1:7000, 'node-b:7001', '[::1]:7002']\nuser: tg",
        ))
        .unwrap();
        let Shape::Cluster(seeds) = &cluster.shape else {
            panic!("not a cluster")
        };
        assert_eq!(seeds.len(), 3);
        assert_eq!(seeds[2].addr.to_string(), "::1:7002");
        assert_eq!(seeds[0].redis.username.as_deref(), Some("tg"));
        let sentinel = endpoints(&section(
            "sentinel: {master: main, nodes: [a:26379, b:26379]}",
        ))
        .unwrap();
        assert!(
            matches!(sentinel.shape, Shape::Sentinel { ref master, ref sentinels } if master == "main" && sentinels.len() == 2)
        );
        assert!(!sentinel.tls);
        let tls = endpoints(&section("cluster: [a:1]\ntls: {}")).unwrap();
        assert!(tls.tls);
    }

    #[test]
    fn shapes_that_make_no_sense_are_located() {
        assert_eq!(error("{}").0, "redis");
        assert_eq!(error("url: redis://h:1\ncluster: [a:1]").0, "redis.cluster");
        assert_eq!(
            error("cluster: [a:1]\nsentinel: {master: m, nodes: [a:2]}").0,
            "redis.sentinel"
        );
        assert_eq!(error("cluster: []").0, "redis.cluster");
        assert_eq!(error("cluster: [a:1, 'b']").0, "redis.cluster[1]");
        assert_eq!(error("cluster: [a:1, 'b:0']").0, "redis.cluster[1]");
        assert_eq!(error("cluster: [a:1, 'b:99999']").0, "redis.cluster[1]");
        assert_eq!(error("cluster: [a:1, 'a:1']").0, "redis.cluster[1]");
        assert_eq!(error("cluster: ['bad host:1']").0, "redis.cluster[0]");
        assert_eq!(
            error("sentinel: {master: m, nodes: []}").0,
            "redis.sentinel.nodes"
        );
        assert_eq!(
            error("sentinel: {master: '', nodes: [a:1]}").0,
            "redis.sentinel.master"
        );
        assert_eq!(error("url: http://h:1").0, "redis.url");
        assert_eq!(error("url: redis://h:1\ntls: {}").0, "redis.tls");
        assert_eq!(error("url: redis://u@h:1\nuser: v").0, "redis.user");
        assert_eq!(
            error("cluster: [a:1]\npassword_env: TOLLGATE_TEST_SURELY_UNSET").0,
            "redis.password_env"
        );
    }
}
