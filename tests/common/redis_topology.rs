//! Redis Cluster and Sentinel sets of the test's own: real `redis-server` and
//! `redis-sentinel` processes on free ports in a temp dir, ready when every node says so.

use super::{free_port, output_within, require_tool, wait_for};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn cli(port: u16, args: &[&str]) -> Option<String> {
    cli_as(&[], port, args)
}

/// redis-cli with `flags` first (TLS and the password of a hardened cluster).
fn cli_as(flags: &[String], port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .args(flags)
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn spawn_server(dir: &Path, port: u16, extra: &[String]) -> Child {
    spawn_server_as(&[], dir, port, extra)
}

/// Starts one server; `cli_flags` are what redis-cli needs to reach it.
fn spawn_server_as(cli_flags: &[String], dir: &Path, port: u16, extra: &[String]) -> Child {
    let log_path = dir.join(format!("redis-{port}.log"));
    let log = std::fs::File::create(&log_path).expect("create the redis-server log");
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(log.try_clone().expect("the log file"))
        .stderr(log)
        .spawn()
        .expect("spawn redis-server");
    // A server that exits (its port taken meanwhile) says why at once; one that is only
    // slow to start, on a machine busy with builds, gets 30 s.
    wait_for(
        &format!("redis-server on {port}"),
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                panic!("redis-server on {port} exited ({status}): {log}");
            }
            cli_as(cli_flags, port, &["PING"]).filter(|r| r.contains("PONG"))
        },
    );
    child
}

fn tools() {
    require_tool(
        "redis-server",
        "install it with `apt-get install -y redis-server`; .ci/run does this",
    );
    require_tool(
        "redis-cli",
        "install it with `apt-get install -y redis-tools`; .ci/run does this",
    );
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct ClusterNode {
    pub id: String,
    pub port: u16,
    pub master: bool,
    pub failed: bool,
    pub slots: Vec<(u16, u16)>,
}

/// A Redis Cluster: `masters` masters with one replica each, node timeout 1 s.
pub struct RedisCluster {
    dir: tempfile::TempDir,
    servers: HashMap<u16, Child>,
    /// Nodes stopped with SIGSTOP: not asked anything (redis-cli would wait forever).
    frozen: Vec<Child>,
    pub ports: Vec<u16>,
    /// What redis-cli needs to reach a node (empty unless hardened).
    cli_flags: Vec<String>,
}

/// A cluster closed as production runs one: TLS for clients, the cluster bus and
/// replication, a password on the default user, and `users` (ACL rules, as `ACL SETUSER`
/// takes them) defined on every node.
pub struct Hardening {
    pub certs: super::certs::Certs,
    pub admin_password: String,
    pub users: Vec<Vec<String>>,
}

impl Hardening {
    fn server_args(&self, port: u16) -> Vec<String> {
        let c = &self.certs;
        let mut args: Vec<String> = [
            // The plain port given first is turned off: later arguments win.
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &c.server_cert.display().to_string(),
            "--tls-key-file",
            &c.server_key.display().to_string(),
            // The cluster bus always asks the connecting node for a certificate, and the
            // server's is for serverAuth only.
            "--tls-client-cert-file",
            &c.client_cert.display().to_string(),
            "--tls-client-key-file",
            &c.client_key.display().to_string(),
            "--tls-ca-cert-file",
            &c.ca_cert.display().to_string(),
            "--tls-auth-clients",
            "no",
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--requirepass",
            &self.admin_password,
            "--masterauth",
            &self.admin_password,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for user in &self.users {
            args.push("--user".into());
            args.extend(user.iter().cloned());
        }
        args
    }

    fn cli_flags(&self) -> Vec<String> {
        vec![
            "--tls".into(),
            "--cacert".into(),
            self.certs.ca_cert.display().to_string(),
            "-a".into(),
            self.admin_password.clone(),
            "--no-auth-warning".into(),
        ]
    }
}

/// Fast failovers for tests: a master silent for a second is failed over.
const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_secs(1);

impl RedisCluster {
    pub fn start(masters: usize) -> RedisCluster {
        Self::launch(masters, None, DEFAULT_NODE_TIMEOUT)
    }

    /// A cluster whose nodes take `node_timeout` (`cluster-node-timeout`) to hold a silent
    /// master failed, and so about that long and a second more to promote its replica.
    pub fn start_with_node_timeout(masters: usize, node_timeout: Duration) -> RedisCluster {
        Self::launch(masters, None, node_timeout)
    }

    /// The same cluster behind TLS and passwords ([`Hardening`]).
    pub fn start_hardened(masters: usize, hardening: &Hardening) -> RedisCluster {
        Self::launch(masters, Some(hardening), DEFAULT_NODE_TIMEOUT)
    }

    fn launch(
        masters: usize,
        hardening: Option<&Hardening>,
        node_timeout: Duration,
    ) -> RedisCluster {
        tools();
        let cli_flags = hardening.map_or_else(Vec::new, Hardening::cli_flags);
        let dir = tempfile::tempdir().expect("tempdir");
        // Node and bus ports chosen together, so none is handed out twice.
        let mut chosen = std::collections::BTreeSet::new();
        while chosen.len() < masters * 4 {
            chosen.insert(free_port());
        }
        let chosen: Vec<u16> = chosen.into_iter().collect();
        let (ports, bus) = chosen.split_at(masters * 2);
        let (ports, bus) = (ports.to_vec(), bus.to_vec());
        let mut servers = HashMap::new();
        let node_timeout = node_timeout.as_millis().to_string();
        for (port, bus) in ports.iter().zip(&bus) {
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &format!("nodes-{port}.conf"),
                "--cluster-node-timeout",
                &node_timeout,
                // A replica may take over however long it was cut off: a test kills
                // masters on purpose, and the machine may be slow to resync.
                "--cluster-replica-validity-factor",
                "0",
                // Otherwise every master refuses every key (CLUSTERDOWN) from when a master
                // is marked failed until its replica takes over.
                "--cluster-require-full-coverage",
                "no",
                // The bus port is otherwise the port + 10000, which may be taken or > 65535.
                "--cluster-port",
                &bus.to_string(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut extra = extra;
            if let Some(h) = hardening {
                extra.extend(h.server_args(*port));
            }
            servers.insert(
                *port,
                spawn_server_as(&cli_flags, dir.path(), *port, &extra),
            );
        }
        let mut create = Command::new("redis-cli");
        create.args(&cli_flags).args(["--cluster", "create"]);
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = output_within(&mut create, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = RedisCluster {
            dir,
            servers,
            frozen: Vec::new(),
            ports,
            cli_flags,
        };
        cluster.wait_healthy(masters);
        cluster
    }

    /// Every live node says `cluster_state:ok`, and `masters` masters each have a replica.
    pub fn wait_healthy(&self, masters: usize) {
        wait_for("a healthy cluster", Duration::from_secs(30), || {
            let all_ok = self.live_ports().iter().all(|p| {
                self.cli(*p, &["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            let nodes = self.nodes();
            let serving = nodes
                .iter()
                .filter(|n| n.master && !n.slots.is_empty())
                .count();
            // A replica counts once its replication link is up: only then can it take over.
            let replicas = nodes
                .iter()
                .filter(|n| !n.master && !n.failed)
                .filter(|n| {
                    self.cli(n.port, &["INFO", "replication"])
                        .is_some_and(|i| i.contains("master_link_status:up"))
                })
                .count();
            (all_ok && serving == masters && replicas >= masters).then_some(())
        });
    }

    fn live_ports(&self) -> Vec<u16> {
        self.ports
            .iter()
            .copied()
            .filter(|p| self.servers.contains_key(p))
            .collect()
    }

    /// `host:port` of every node, for `redis.cluster`.
    pub fn seeds(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// `CLUSTER NODES` as a live node sees it.
    pub fn nodes(&self) -> Vec<ClusterNode> {
        let Some(text) = self
            .live_ports()
            .into_iter()
            .find_map(|p| self.cli(p, &["CLUSTER", "NODES"]))
        else {
            return Vec::new();
        };
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let port = fields.get(1)?.split('@').next()?.rsplit(':').next()?;
                let flags = fields.get(2)?;
                let slots = fields
                    .iter()
                    .skip(8)
                    .filter(|s| !s.starts_with('['))
                    .filter_map(|s| match s.split_once('-') {
                        Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                        None => s.parse().ok().map(|x| (x, x)),
                    })
                    .collect();
                Some(ClusterNode {
                    id: fields[0].to_string(),
                    port: port.parse().ok()?,
                    master: flags.contains("master"),
                    failed: flags.contains("fail"),
                    slots,
                })
            })
            .collect()
    }

    /// The port of the master serving `slot`.
    pub fn owner(&self, slot: u16) -> Option<u16> {
        self.nodes()
            .into_iter()
            .find(|n| {
                n.master && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot))
            })
            .map(|n| n.port)
    }

    /// The masters serving slots, by port.
    pub fn masters(&self) -> Vec<u16> {
        let mut out: Vec<u16> = self
            .nodes()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        out.sort();
        out
    }

    /// SIGKILL one node, as in a crash.
    pub fn kill(&mut self, port: u16) {
        if let Some(mut child) = self.servers.remove(&port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP one node, as a machine that hangs: connections to it open, and nothing
    /// answers. It stays stopped until the cluster is dropped.
    pub fn freeze(&mut self, port: u16) {
        if let Some(child) = self.servers.remove(&port) {
            let stopped = Command::new("kill")
                .args(["-STOP", &child.id().to_string()])
                .status()
                .expect("kill -STOP");
            assert!(stopped.success(), "kill -STOP {}", child.id());
            self.frozen.push(child);
        }
    }

    /// Waits until a live master other than `old` serves `slot`; returns when it was seen.
    pub fn wait_promoted(&self, slot: u16, old: u16) -> Instant {
        wait_for(
            "a replica to take over the slot",
            Duration::from_secs(30),
            || {
                let owner = self.owner(slot)?;
                let ok = self
                    .cli(owner, &["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"));
                (owner != old && ok).then(Instant::now)
            },
        )
    }

    /// Moves `count` slots from the master on `from` to the one on `to` with `redis-cli
    /// --cluster reshard` (the lowest-numbered slots of `from` go first).
    pub fn reshard(&self, from: u16, to: u16, count: u16) -> std::process::Output {
        let id = |port| {
            self.nodes()
                .into_iter()
                .find(|n| n.port == port)
                .map(|n| n.id)
                .expect("node id")
        };
        let mut reshard = Command::new("redis-cli");
        reshard
            .args(&self.cli_flags)
            .args(["--cluster", "reshard", &format!("127.0.0.1:{from}")])
            .args(["--cluster-from", &id(from), "--cluster-to", &id(to)])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"]);
        output_within(&mut reshard, Duration::from_secs(120))
    }

    /// Asks a live node; a frozen one would never answer.
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        if !self.servers.contains_key(&port) {
            return None;
        }
        cli_as(&self.cli_flags, port, args)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let frozen = self.frozen.drain(..);
        for mut child in self.servers.drain().map(|(_, c)| c).chain(frozen) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A master, one replica and three sentinels watching them as `main` (quorum 2, down
/// after 1 s).
pub struct SentinelSet {
    dir: tempfile::TempDir,
    servers: HashMap<u16, Child>,
    pub master: u16,
    pub replica: u16,
    pub sentinels: Vec<u16>,
}

pub const SENTINEL_MASTER: &str = "main";

impl SentinelSet {
    pub fn start() -> SentinelSet {
        tools();
        require_tool(
            "redis-sentinel",
            "install it with `apt-get install -y redis-sentinel`; .ci/run does this",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let (master, replica) = (free_port(), free_port());
        let mut servers = HashMap::new();
        servers.insert(master, spawn_server(dir.path(), master, &[]));
        let follow = vec![
            "--replicaof".to_string(),
            "127.0.0.1".to_string(),
            master.to_string(),
        ];
        servers.insert(replica, spawn_server(dir.path(), replica, &follow));
        wait_for("the replica in sync", Duration::from_secs(20), || {
            cli(replica, &["INFO", "replication"]).filter(|i| i.contains("master_link_status:up"))
        });
        let sentinels: Vec<u16> = (0..3).map(|_| free_port()).collect();
        for port in &sentinels {
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                     sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 2\n\
                     sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                     sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
                     sentinel parallel-syncs {SENTINEL_MASTER} 1\n",
                    dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let child = Command::new("redis-sentinel")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel");
            servers.insert(*port, child);
        }
        // Ready when every sentinel knows the replica and the two other sentinels, so a
        // failover can reach its quorum.
        wait_for(
            "sentinels that know each other",
            Duration::from_secs(30),
            || {
                sentinels
                    .iter()
                    .all(|p| {
                        let others = cli(*p, &["SENTINEL", "SENTINELS", SENTINEL_MASTER])
                            .map(|t| t.matches("runid").count())
                            .unwrap_or(0);
                        let replicas = cli(*p, &["SENTINEL", "REPLICAS", SENTINEL_MASTER])
                            .map(|t| t.matches("runid").count())
                            .unwrap_or(0);
                        others >= 2 && replicas >= 1
                    })
                    .then_some(())
            },
        );
        SentinelSet {
            dir,
            servers,
            master,
            replica,
            sentinels,
        }
    }

    /// `host:port` of each sentinel, for `redis.sentinel.nodes`.
    pub fn nodes(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect()
    }

    /// The master's port as the first answering sentinel names it.
    pub fn current_master(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|p| {
            let out = cli(
                *p,
                &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER],
            )?;
            out.lines().nth(1)?.trim().parse().ok()
        })
    }

    pub fn kill(&mut self, port: u16) {
        if let Some(mut child) = self.servers.remove(&port) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        cli(port, args)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for (_, mut child) in self.servers.drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
