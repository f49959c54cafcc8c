//! Real processes under test: stub backends, tollgate instances and redis servers.

use super::{free_port, wait_for};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

/// A binary built by this workspace, next to the tollgate binary cargo built for the tests.
pub fn workspace_bin(name: &str) -> PathBuf {
    let tollgate = PathBuf::from(env!("CARGO_BIN_EXE_tollgate"));
    let path = tollgate.with_file_name(name);
    assert!(
        path.is_file(),
        "{} is missing; build the workspace first (`cargo test --workspace` does, or run `cargo build --workspace`)",
        path.display()
    );
    path
}

pub fn tollgate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tollgate"))
}

pub fn send_signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on a pid we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill({}, {signal}) failed", child.id());
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `stub-service` process.
pub struct Stub {
    child: Option<Child>,
    pub name: String,
    pub addr: SocketAddr,
    args: Vec<String>,
}

impl Stub {
    pub fn start(name: &str) -> Stub {
        Stub::start_with(name, &[])
    }

    pub fn start_with(name: &str, args: &[&str]) -> Stub {
        let mut stub = Stub {
            child: None,
            name: name.to_string(),
            // Port 0: the stub binds a port the system picks and prints it, so no other
            // process can take it between choosing and binding.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        stub.launch();
        stub
    }

    /// Starts the stub on `self.addr` and waits until it prints the address it listens on.
    fn launch(&mut self) {
        let mut child = Command::new(workspace_bin("stub-service"))
            .args(["--name", &self.name, "--listen", &self.addr.to_string()])
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn stub-service");
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            // Printed once bound; an exit (a port taken on restart) ends the read empty.
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let bound = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let Some(bound) = bound else {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "stub {} could not listen on {} (exit: {status:?})",
                self.name, self.addr
            );
        };
        self.addr = bound;
        self.child = Some(child);
    }

    /// `host:port` for a config's backend list.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// (requests answered, connections accepted) so far.
    pub fn stats(&self) -> (u64, u64) {
        let reply = super::get(&format!("http://{}/_stub/stats", self.addr)).json();
        (
            reply["answered"].as_u64().expect("answered"),
            reply["connections"].as_u64().expect("connections"),
        )
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A `tollgate run` process with its config in a temporary directory.
pub struct Tollgate {
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// A second free port for a TLS listener: `{tls_listen}` in the config body.
    pub tls: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    log_path: PathBuf,
}

impl Tollgate {
    /// Starts tollgate on `body` (YAML) and waits until both listeners answer.
    ///
    /// The harness adds `listen`, `threads: 1`, `admin.listen` and a `server` section with
    /// per-instance pid and upgrade sockets unless `body` sets them; `{admin_listen}`,
    /// `{proxy_listen}` and `{dir}` in `body` are replaced.
    pub fn start(body: &str) -> Tollgate {
        // Ports are picked free, then bound by the child a moment later; another process
        // may take one in between. Such a start is retried on new ports.
        for _ in 0..3 {
            let t = Tollgate::spawn(body);
            if t.wait_ready_or_exit() {
                return t;
            }
            let logs = t.logs();
            assert!(
                logs.contains("Address already in use"),
                "tollgate exited before it was ready:\n{logs}"
            );
        }
        panic!("tollgate found its ports taken three times in a row");
    }

    /// Starts tollgate with extra environment variables and waits until it answers.
    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> Tollgate {
        let mut t = Tollgate::spawn(body);
        if let Some(mut child) = t.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        t.env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        t.child = Some(t.launch(&[]));
        t.wait_ready();
        t
    }

    /// Starts tollgate without waiting for it.
    pub fn spawn(body: &str) -> Tollgate {
        let dir = tempfile::tempdir().expect("tempdir");
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let tls: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config_path = dir.path().join("config.yaml");
        let text = assemble_config(body, proxy, admin, tls, dir.path());
        fs::write(&config_path, text).expect("write config");
        let log_path = dir.path().join("tollgate.log");
        let mut t = Tollgate {
            child: None,
            env: Vec::new(),
            proxy,
            admin,
            tls,
            dir,
            config_path,
            log_path,
        };
        t.child = Some(t.launch(&[]));
        t
    }

    fn launch(&self, extra: &[&str]) -> Child {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        Command::new(tollgate_bin())
            .args(["run", "-c"])
            .arg(&self.config_path)
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("TEST_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tollgate")
    }

    /// Starts `n` nodes on one config and waits until each is ready, reaches Redis and
    /// counts all `n` live (a share computed before that would be of a smaller fleet).
    pub fn fleet(body: &str, n: usize) -> Vec<Tollgate> {
        let mut nodes: Vec<Tollgate> = (0..n).map(|_| Tollgate::spawn(body)).collect();
        for node in &mut nodes {
            if !node.wait_ready_or_exit() {
                let logs = node.logs();
                assert!(
                    logs.contains("Address already in use"),
                    "tollgate exited before it was ready:\n{logs}"
                );
                // A port taken between picking and binding: start this one again.
                *node = Tollgate::start(body);
            }
            node.wait_redis_up(Duration::from_secs(10));
        }
        wait_for(&format!("{n} live nodes"), Duration::from_secs(10), || {
            nodes
                .iter()
                .all(|node| node.metric("tollgate_redis_nodes") == Some(n as f64))
                .then_some(())
        });
        nodes
    }

    pub fn wait_ready(&self) {
        assert!(
            self.wait_ready_or_exit(),
            "tollgate exited before it was ready:\n{}",
            self.logs()
        );
    }

    /// Waits until both listeners answer (true) or the process has exited (false).
    fn wait_ready_or_exit(&self) -> bool {
        let (proxy, admin) = (self.proxy, self.admin);
        let pid = self.child.as_ref().map(Child::id);
        let agent = super::agent();
        wait_for(
            &format!("tollgate on {proxy}\n{}", self.logs()),
            Duration::from_secs(15),
            || {
                let ok = |url: String| {
                    super::try_get_with(&agent, &url, &[]).is_ok_and(|r| r.status == 200)
                };
                if ok(format!("http://{proxy}/health")) && ok(format!("http://{admin}/health")) {
                    return Some(true);
                }
                pid.filter(|&pid| has_exited(pid)).map(|_| false)
            },
        )
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    pub fn child(&self) -> &Child {
        self.child.as_ref().expect("tollgate is running")
    }

    pub fn pid(&self) -> u32 {
        self.child().id()
    }

    pub fn signal(&self, signal: i32) {
        send_signal(self.child(), signal);
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = wait_exit(child, timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Kills the process and starts it again on the same config, directory and ports.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.child = Some(self.launch(&[]));
        self.wait_ready();
    }

    /// Starts a second process on the same config with `--upgrade`; it takes the listening
    /// sockets once this one gets SIGQUIT.
    pub fn spawn_upgrade(&self) -> Child {
        self.launch(&["--upgrade"])
    }

    /// Replaces the tracked process (after an upgrade handed the sockets to `next`).
    pub fn replace_child(&mut self, next: Child) -> Option<Child> {
        self.child.replace(next)
    }

    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        super::get(&self.admin_url("/metrics")).body
    }

    /// The value of one sample, given as it appears in the exposition, e.g.
    /// `tollgate_requests_total{route="/a",method="GET",status="200"}` (labels in any order).
    /// Waits until this node reaches Redis: before that a global policy decides on the
    /// node's local share, so counts taken earlier are not the fleet's.
    pub fn wait_redis_up(&self, within: Duration) {
        wait_for(
            &format!("redis up on {}\n{}", self.proxy, self.logs()),
            within,
            || (self.metric("tollgate_redis_up") == Some(1.0)).then_some(()),
        );
    }

    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_value(&self.metrics(), sample)
    }

    /// Rewrites the config file in place (for reload tests).
    pub fn write_config(&self, body: &str) {
        let text = assemble_config(body, self.proxy, self.admin, self.tls, self.dir.path());
        fs::write(&self.config_path, text).expect("write config");
    }
}

impl Drop for Tollgate {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- tollgate log ({}) ----\n{}", self.proxy, self.logs());
        }
    }
}

fn has_top_level_key(body: &str, key: &str) -> bool {
    body.lines().any(|l| l.starts_with(&format!("{key}:")))
}

fn assemble_config(
    body: &str,
    proxy: SocketAddr,
    admin: SocketAddr,
    tls: SocketAddr,
    dir: &Path,
) -> String {
    let body = body
        .replace("{admin_listen}", &admin.to_string())
        .replace("{proxy_listen}", &proxy.to_string())
        .replace("{tls_listen}", &tls.to_string())
        .replace("{tls_port}", &tls.port().to_string())
        .replace("{dir}", &dir.display().to_string());
    let mut text = String::new();
    if !has_top_level_key(&body, "listen") {
        text.push_str(&format!("listen: {proxy}\n"));
    }
    if !has_top_level_key(&body, "threads") {
        text.push_str("threads: 1\n");
    }
    if !has_top_level_key(&body, "admin") {
        text.push_str(&format!("admin:\n  listen: {admin}\n"));
    }
    if !has_top_level_key(&body, "server") {
        text.push_str(&format!(
            "server:\n  pid_file: {0}/tollgate.pid\n  upgrade_sock: {0}/upgrade.sock\n",
            dir.display()
        ));
    }
    text.push_str(&body);
    text
}

/// Finds a sample in Prometheus text, matching the metric name and the given labels.
pub fn metric_value(exposition: &str, sample: &str) -> Option<f64> {
    let (name, labels) = match sample.split_once('{') {
        Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
        None => (sample, Vec::new()),
    };
    exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, parse_labels(rest.trim_end_matches('}'))),
                None => (series, Vec::new()),
            };
            (series_name == name && labels.iter().all(|l| series_labels.contains(l)))
                .then(|| value.parse().ok())?
        })
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    text.split("\",")
        .filter(|s| !s.is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

/// A `redis-server` of the test's own, on a free port, that the test can kill and restart.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    tls: Option<super::certs::Certs>,
}

impl Redis {
    pub fn start() -> Redis {
        Redis::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `--requirepass`).
    pub fn start_with(extra: &[&str]) -> Redis {
        super::require_tool(
            "redis-server",
            "install it with `apt-get install -y redis-server`; .ci/run does this",
        );
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls: None,
        };
        redis.launch();
        redis
    }

    /// Starts with TLS only (no plain port), requiring client certificates signed by the
    /// same CA as its own.
    pub fn start_tls(certs: &super::certs::Certs) -> Redis {
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("tempdir"),
            extra: Vec::new(),
            tls: Some(certs.clone()),
        };
        redis.launch();
        redis
    }

    fn launch(&mut self) {
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some(certs) => command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(&certs.server_cert)
                .arg("--tls-key-file")
                .arg(&certs.server_key)
                .arg("--tls-ca-cert-file")
                .arg(&certs.ca_cert)
                .args(["--tls-auth-clients", "yes"]),
        };
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let port = self.port;
        wait_for(
            &format!("redis-server on {port}"),
            Duration::from_secs(10),
            || self.ping().then_some(()),
        );
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    fn ping(&self) -> bool {
        self.cli(&["PING"]).is_some_and(|r| r.contains("PONG"))
    }

    /// Runs a command with redis-cli and returns its output.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(certs) = &self.tls {
            command
                .arg("--tls")
                .arg("--cacert")
                .arg(&certs.ca_cert)
                .arg("--cert")
                .arg(&certs.client_cert)
                .arg("--key")
                .arg(&certs.client_key);
        }
        if let Some(i) = self.extra.iter().position(|a| a == "--requirepass") {
            command.args(["-a", &self.extra[i + 1], "--no-auth-warning"]);
        }
        let out = command.args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// SIGKILL: the server vanishes mid-conversation, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Total calls of `command` (lower case, e.g. `evalsha`) from `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]).unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Total calls of every command.
    pub fn all_command_calls(&self) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]).unwrap_or_default();
        info.lines()
            .filter_map(|l| l.split("calls=").nth(1))
            .filter_map(|rest| rest.split(',').next())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion, killing it (and failing) if it outlives `timeout`.
pub fn output_within(command: &mut Command, timeout: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    match wait_exit(&mut child, timeout) {
        Some(_) => child.wait_with_output().expect("output"),
        None => {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{command:?} still running after {timeout:?}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

/// The least-privilege ACL rules of docs/fleet.md for tollgate's user, as `ACL SETUSER` (or a
/// `user` line) takes them: `user` on with password `password`, limited to `keys`.
pub fn least_privilege_acl(user: &str, password: &str, keys: &str) -> Vec<String> {
    let password = format!(">{password}");
    [
        user,
        "on",
        &password,
        keys,
        "-@all",
        "+@read",
        "+@write",
        "+@scripting",
        "+@connection",
        "+time",
    ]
    .map(String::from)
    .to_vec()
}

/// Whether the child `pid` has exited (a zombie until it is waited for, or gone).
fn has_exited(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}
