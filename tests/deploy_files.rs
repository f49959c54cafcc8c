//! docker-compose.yml, the Dockerfile, the docker config and the monitoring files
//! (Prometheus, Grafana) cannot be run here (no Docker engine), so they are read against
//! each other, checked with `promtool`, and the dashboard's metrics against a real tollgate.

mod common;

use common::{agent, get_with, require_tool, Redis, Stub, Tollgate};
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn compose_runs_redis_tollgate_and_both_stub_services() {
    let compose = compose();
    let services = compose["services"].as_mapping().unwrap();
    for name in ["redis", "tollgate", "service-a", "service-b"] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml lacks the {name} service"
        );
    }
}

#[test]
fn the_docker_config_is_valid_and_points_at_the_compose_services() {
    let compose = compose();
    let tollgate = &compose["services"]["tollgate"];
    let mount = strings(&tollgate["volumes"])
        .into_iter()
        .find(|v| v.ends_with(":/etc/tollgate/config.yaml:ro"))
        .expect("tollgate mounts its config");
    let host_path = mount.split(':').next().unwrap();
    let config_path = root().join(host_path);
    let text = std::fs::read_to_string(&config_path).unwrap();
    let config = parse_with_token(&text, host_path);

    // The command runs the mounted file.
    assert_eq!(
        strings(&tollgate["command"]),
        ["run", "-c", "/etc/tollgate/config.yaml"]
    );

    // Every backend is a compose service listening on that port.
    for (name, upstream) in &config.upstreams {
        for backend in &upstream.backends {
            let (host, port) = tollgate::config::split_host_port(&backend.address).unwrap();
            let service = &compose["services"][host];
            assert!(
                service.is_mapping(),
                "upstream {name}: no compose service `{host}`"
            );
            let command = strings(&service["command"]);
            let listen = command
                .windows(2)
                .find(|w| w[0] == "--listen")
                .map(|w| w[1].clone())
                .unwrap_or_else(|| panic!("service {host} has no --listen"));
            assert_eq!(listen, format!("0.0.0.0:{port}"), "service {host}");
            assert_eq!(strings(&service["entrypoint"]), ["stub-service"]);
        }
    }

    // Redis is the compose service, and tollgate waits for it.
    let redis_url = config
        .redis
        .as_ref()
        .expect("the docker config uses redis")
        .url
        .clone();
    assert_eq!(redis_url.as_deref(), Some("redis://redis:6379"));
    assert!(
        tollgate["depends_on"]["redis"].is_mapping(),
        "tollgate depends on redis"
    );
    // The store is the compose PostgreSQL, and tollgate waits for it too.
    let store_url = config
        .store
        .url
        .clone()
        .expect("the docker config names a store");
    assert!(
        store_url.starts_with("postgres://tollgate:")
            && store_url.ends_with("@postgres:5432/tollgate"),
        "{store_url}"
    );
    assert!(compose["services"]["postgres"].is_mapping());
    assert!(
        tollgate["depends_on"]["postgres"].is_mapping(),
        "tollgate depends on postgres"
    );

    // The published ports are the ones tollgate listens on.
    let ports = strings(&tollgate["ports"]);
    let addresses = config.listen.iter().map(|l| &l.address);
    for listen in addresses.chain([&config.admin.listen]) {
        let port = listen.rsplit(':').next().unwrap();
        assert!(
            listen.starts_with("0.0.0.0:"),
            "{listen} is unreachable from outside the container"
        );
        assert!(
            ports.contains(&format!("{port}:{port}")),
            "port {port} is not published: {ports:?}"
        );
    }
}

#[test]
fn the_dockerfile_ships_the_binaries_and_config_compose_uses() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for needle in [
        "target/release/tollgate /usr/local/bin/tollgate",
        "target/release/stub-service /usr/local/bin/stub-service",
        "COPY deploy/config.docker.yaml /etc/tollgate/config.yaml",
        "cmake",
    ] {
        assert!(dockerfile.contains(needle), "Dockerfile lacks `{needle}`");
    }
    assert!(root().join("deploy/config.docker.yaml").is_file());
    assert!(Path::new(env!("CARGO_BIN_EXE_tollgate")).is_file());
}

// ---- monitoring: Prometheus and Grafana ---------------------------------------------------

const PROMETHEUS_CONFIG: &str = "deploy/prometheus.yml";
const DASHBOARD: &str = "deploy/grafana/dashboards/tollgate.json";
const GRAFANA_PROVISIONING: &str = "deploy/grafana/provisioning";

fn yaml_file(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(root().join(DASHBOARD)).unwrap();
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: {e}"))
}

fn promtool() -> PathBuf {
    require_tool(
        "promtool",
        "install it with `apt-get install -y prometheus` (it ships promtool); .ci/run does this",
    )
}

fn run_promtool(args: &[&str], file: &Path) {
    let out = Command::new(promtool())
        .args(args)
        .arg(file)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {} {}:\n{}{}",
        args.join(" "),
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The docker config as compose mounts it into the tollgate service.
fn docker_config() -> tollgate::config::Config {
    let path = "deploy/config.docker.yaml";
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    parse_with_token(&text, path)
}

/// Parses the docker config as the container would, where compose provides
/// TOLLGATE_ADMIN_TOKEN; without a token its public admin listener is refused.
fn parse_with_token(text: &str, path: &str) -> tollgate::config::Config {
    let refused =
        tollgate::config::parse(text, path).expect_err("a public admin listener needs a token");
    assert!(
        refused
            .errors()
            .iter()
            .all(|e| e.path == "admin.listen" && e.message.contains("needs a token")),
        "{refused}"
    );
    let with_token = text.replacen("admin:\n", "admin:\n  token: token-for-this-test-only\n", 1);
    tollgate::config::parse(&with_token, path)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

/// A service's bind mounts as (path in the repository, path in the container).
fn mounts(service: &Value) -> Vec<(String, String)> {
    strings(&service["volumes"])
        .iter()
        .filter(|v| v.starts_with("./"))
        .map(|v| {
            let mut parts = v.split(':');
            let host = parts.next().unwrap().trim_start_matches("./").to_string();
            let container = parts.next().expect("host:container").to_string();
            (host, container)
        })
        .collect()
}

/// The repository file behind `container_path` in `service`, through its bind mounts.
fn host_path(service: &Value, container_path: &str) -> Option<PathBuf> {
    mounts(service).into_iter().find_map(|(host, container)| {
        let rest = Path::new(container_path).strip_prefix(&container).ok()?;
        Some(root().join(host).join(rest))
    })
}

/// A service's environment, whether written as a mapping or as `KEY=value` entries.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let env = &service["environment"];
    if let Some(map) = env.as_mapping() {
        map.iter()
            .filter_map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    _ => return None,
                };
                Some((k.as_str()?.to_string(), value))
            })
            .collect()
    } else {
        strings(env)
            .iter()
            .filter_map(|e| e.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// Every PromQL query of the dashboard: panel targets (rows nest panels) and variables.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<String> {
    fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, x) in map {
                    match (k.as_str(), x) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        ("templating", _) => {}
                        _ => exprs(x, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|x| exprs(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    exprs(dashboard, &mut out);
    for var in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if var["type"] == "query" {
            let query = &var["query"];
            let text = query.as_str().or_else(|| query["query"].as_str());
            out.push(text.expect("a query variable has a query").to_string());
        }
    }
    out
}

/// The `tollgate_*` metric names a query uses, as written (histogram suffixes included).
fn metric_names(query: &str) -> BTreeSet<String> {
    let is_ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let bytes = query.as_bytes();
    let mut names = BTreeSet::new();
    let mut from = 0;
    while let Some(found) = query[from..].find("tollgate_") {
        let start = from + found;
        let len = bytes[start..].iter().take_while(|c| is_ident(**c)).count();
        if start == 0 || !is_ident(bytes[start - 1]) {
            names.insert(query[start..start + len].to_string());
        }
        from = start + len;
    }
    names
}

/// Metric families in a Prometheus exposition, with their types, from the `# TYPE` lines
/// (present as soon as a family has a series, even one still at zero).
fn families(exposition: &str) -> BTreeMap<String, String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Whether `name`, as a query writes it, is a sample of one of `families`.
fn exported(name: &str, families: &BTreeMap<String, String>) -> bool {
    families.contains_key(name)
        || [
            ("_bucket", &["histogram"][..]),
            ("_sum", &["histogram", "summary"][..]),
            ("_count", &["histogram", "summary"][..]),
        ]
        .iter()
        .any(|(suffix, types)| {
            name.strip_suffix(suffix)
                .and_then(|family| families.get(family))
                .is_some_and(|t| types.contains(&t.as_str()))
        })
}

#[test]
fn promtool_accepts_the_prometheus_config() {
    // `check config` also checks every rule file the config names.
    run_promtool(&["check", "config"], &root().join(PROMETHEUS_CONFIG));

    // Rule files resolve against the config's directory, in the repository as in the
    // container, so each must be mounted beside the config.
    let config = yaml_file(&root().join(PROMETHEUS_CONFIG));
    let prometheus = &compose()["services"]["prometheus"];
    for rules in strings(&config["rule_files"]) {
        let in_repo = root().join("deploy").join(&rules);
        assert!(in_repo.is_file(), "rule file {rules} is not in deploy/");
        let in_container = Path::new("/etc/prometheus").join(&rules);
        assert_eq!(
            host_path(prometheus, in_container.to_str().unwrap()),
            Some(in_repo),
            "compose does not mount {rules} at {}",
            in_container.display()
        );
    }
}

#[test]
fn prometheus_scrapes_the_compose_tollgate_on_its_admin_port() {
    let config = yaml_file(&root().join(PROMETHEUS_CONFIG));
    let admin = docker_config().admin.listen;
    let (_, port) = admin.rsplit_once(':').unwrap();

    let jobs = config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "tollgate")
        .expect("a scrape job named tollgate");
    let targets: Vec<String> = job["static_configs"]
        .as_sequence()
        .expect("static_configs")
        .iter()
        .flat_map(|c| strings(&c["targets"]))
        .collect();
    assert_eq!(
        targets,
        [format!("tollgate:{port}")],
        "admin listens on {admin}"
    );
    assert!(
        compose()["services"]["tollgate"].is_mapping(),
        "the scrape target names the compose service tollgate"
    );
    assert_eq!(
        job["metrics_path"].as_str().unwrap_or("/metrics"),
        "/metrics"
    );
    assert_eq!(job["scrape_interval"].as_str(), Some("5s"));
    // /metrics needs no token, and the token is not something to put in this file.
    for auth in [
        "authorization",
        "basic_auth",
        "bearer_token",
        "bearer_token_file",
    ] {
        assert!(job[auth].is_null(), "the tollgate job sets {auth}");
    }
}

#[test]
fn the_dashboard_queries_are_promql() {
    // Grafana's variables replaced by what they expand to, then checked as recording rules.
    let rules: Vec<Value> = dashboard_queries(&dashboard())
        .iter()
        .enumerate()
        .map(|(i, query)| {
            // Grafana's `label_values(selector, label)` is no PromQL; its selector is.
            let query = match query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.rsplit_once(','))
            {
                Some((selector, label)) => format!("group by ({}) ({selector})", label.trim()),
                None => query.clone(),
            };
            let expr = query
                .replace("$__rate_interval", "1m")
                .replace("$__interval", "1m")
                .replace("$__range", "1h")
                .replace("$instance", ".*");
            assert!(!expr.contains('$'), "unknown variable in {query}");
            serde_yaml::from_str(&format!("record: dashboard:query_{i}"))
                .map(|mut rule: Value| {
                    rule["expr"] = Value::String(expr);
                    rule
                })
                .unwrap()
        })
        .collect();
    assert!(rules.len() >= 16, "only {} queries", rules.len());
    let mut file = serde_yaml::Mapping::new();
    let mut group = serde_yaml::Mapping::new();
    group.insert("name".into(), "dashboard".into());
    group.insert("rules".into(), Value::Sequence(rules));
    file.insert(
        "groups".into(),
        Value::Sequence(vec![Value::Mapping(group)]),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard.rules.yml");
    std::fs::write(&path, serde_yaml::to_string(&file).unwrap()).unwrap();
    run_promtool(&["check", "rules"], &path);
}

#[test]
fn the_dashboard_uses_only_metrics_tollgate_exports() {
    let queries = dashboard_queries(&dashboard());
    let used: BTreeSet<String> = queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(used.len() >= 15, "the dashboard uses only {used:?}");

    // A tollgate with an upstream, a route, a limit and Redis, so every family shows.
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&format!(
        "redis:
  url: {}
upstreams:
  a:
    backends: [{}]
    health_check: {{ path: /health, interval: 200ms, timeout: 100ms }}
limits:
  per_client:
    key: client_ip
    algorithm: fixed_window
    rate: 1000/1m
    scope: local
routes:
  - prefix: /a
    upstream: a
    limits: [per_client]
",
        redis.url(),
        stub.address()
    ));
    let agent = agent();
    for _ in 0..2 {
        assert_eq!(get_with(&agent, &t.url("/a/x"), &[]).status, 200);
    }
    let exposition = t.metrics();
    let families = families(&exposition);
    let missing: Vec<&String> = used.iter().filter(|n| !exported(n, &families)).collect();
    assert!(
        missing.is_empty(),
        "{DASHBOARD} queries metrics tollgate does not export: {missing:?}\nexported: {:?}",
        families.keys().collect::<Vec<_>>()
    );
}

#[test]
fn compose_runs_prometheus_and_grafana_on_the_repository_files() {
    let compose = compose();
    let services = &compose["services"];
    for name in ["prometheus", "grafana"] {
        let service = &services[name];
        assert!(
            service.is_mapping(),
            "docker-compose.yml lacks the {name} service"
        );
        assert!(
            service["image"].as_str().is_some_and(|i| i.contains(name)),
            "{name} runs an image of {name}"
        );
        assert!(!mounts(service).is_empty(), "{name} mounts nothing");
        for (host, container) in mounts(service) {
            assert!(
                root().join(&host).exists(),
                "{name} mounts ./{host} (at {container}), which is not in the repository"
            );
        }
    }

    // Prometheus runs the mounted deploy/prometheus.yml, on the port it publishes.
    let prometheus = &services["prometheus"];
    let config_file = strings(&prometheus["command"])
        .iter()
        .find_map(|a| a.strip_prefix("--config.file=").map(String::from))
        .unwrap_or_else(|| "/etc/prometheus/prometheus.yml".into());
    assert_eq!(
        host_path(prometheus, &config_file),
        Some(root().join(PROMETHEUS_CONFIG)),
        "prometheus runs {config_file}, which is not a mount of {PROMETHEUS_CONFIG}"
    );
    assert!(strings(&prometheus["ports"]).contains(&"9090:9090".to_string()));

    // Grafana reads its provisioning from the repository...
    let grafana = &services["grafana"];
    let provisioning =
        host_path(grafana, "/etc/grafana/provisioning").expect("grafana mounts its provisioning");
    assert_eq!(provisioning, root().join(GRAFANA_PROVISIONING));
    assert!(strings(&grafana["ports"]).contains(&"3000:3000".to_string()));
    let env = environment(grafana);
    assert_eq!(
        env.get("GF_AUTH_ANONYMOUS_ENABLED").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        env.get("GF_AUTH_ANONYMOUS_ORG_ROLE").map(String::as_str),
        Some("Viewer"),
        "anonymous visitors may only view"
    );
    if let Some(home) = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH") {
        assert_eq!(host_path(grafana, home), Some(root().join(DASHBOARD)));
    }

    // ...its datasource is the compose Prometheus, under the uid the dashboard names...
    let datasources = yaml_file(&provisioning.join("datasources/prometheus.yml"));
    let source = datasources["datasources"]
        .as_sequence()
        .and_then(|s| s.iter().find(|d| d["type"] == "prometheus"))
        .expect("a prometheus datasource");
    assert_eq!(source["uid"].as_str(), Some("prometheus"));
    assert_eq!(source["url"].as_str(), Some("http://prometheus:9090"));

    // ...and its dashboard provider loads the directory holding the tollgate dashboard.
    let providers = yaml_file(&provisioning.join("dashboards/tollgate.yml"));
    let provider_paths: Vec<PathBuf> = providers["providers"]
        .as_sequence()
        .expect("providers")
        .iter()
        .map(|p| {
            let path = p["options"]["path"].as_str().expect("options.path");
            host_path(grafana, path)
                .unwrap_or_else(|| panic!("dashboard provider path {path} is not mounted"))
        })
        .collect();
    assert!(
        provider_paths
            .iter()
            .any(|p| p.join("tollgate.json") == root().join(DASHBOARD)),
        "no provider loads {DASHBOARD}: {provider_paths:?}"
    );
}

#[test]
fn the_dashboard_is_well_formed() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "tollgate");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 39));

    // Every datasource reference is the provisioned Prometheus (or Grafana's own).
    fn datasources(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, x) in map {
                    if k == "datasource" {
                        out.push(x.clone());
                    } else {
                        datasources(x, out);
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|x| datasources(x, out)),
            _ => {}
        }
    }
    let mut refs = Vec::new();
    datasources(&dashboard, &mut refs);
    for r in refs {
        let grafana = r["type"] == "grafana";
        assert!(
            grafana || (r["type"] == "prometheus" && r["uid"] == "prometheus"),
            "datasource {r} is not the provisioned prometheus"
        );
    }

    // Panel ids are unique; every query panel has targets with distinct refIds.
    let mut ids = BTreeSet::new();
    let panels = dashboard["panels"].as_array().expect("panels");
    let nested = panels
        .iter()
        .flat_map(|p| p["panels"].as_array().into_iter().flatten());
    for panel in panels.iter().chain(nested) {
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} repeats");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().expect("refId"))
            .collect();
        assert_eq!(refs.len(), targets.len(), "panel {}", panel["title"]);
    }
}

#[test]
fn the_public_admin_listener_gets_a_token_from_the_environment() {
    let admin = docker_config().admin.listen;
    let ip: std::net::IpAddr = admin.rsplit_once(':').unwrap().0.parse().unwrap();
    assert!(!ip.is_loopback(), "the docker admin listener is {admin}");
    let env = environment(&compose()["services"]["tollgate"]);
    let token = env
        .get("TOLLGATE_ADMIN_TOKEN")
        .expect("tollgate's environment sets TOLLGATE_ADMIN_TOKEN");
    assert!(
        token.starts_with("${TOLLGATE_ADMIN_TOKEN"),
        "the token comes from the operator's environment, not the file: {token}"
    );
}

#[test]
fn the_cluster_profile_runs_tollgate_on_its_cluster_nodes() {
    let compose = compose();
    let tollgate = &compose["services"]["tollgate-cluster"];
    assert_eq!(strings(&tollgate["profiles"]), vec!["cluster".to_string()]);
    let (config_path, _) = mounts(tollgate)
        .into_iter()
        .find(|(_, container)| container == "/etc/tollgate/config.yaml")
        .expect("mounted config");
    let text = std::fs::read_to_string(root().join(&config_path)).unwrap();
    let config = tollgate::config::parse(&text, "deploy/config.cluster.yaml")
        .unwrap_or_else(|e| panic!("{e}"))
        .config;
    let seeds = config
        .redis
        .and_then(|r| r.cluster)
        .expect("the cluster profile's config uses redis.cluster");
    // Every seed is the fixed address of a node the profile starts.
    let addresses: Vec<String> = compose["services"]
        .as_mapping()
        .unwrap()
        .iter()
        .filter_map(|(_, s)| s["networks"]["cluster"]["ipv4_address"].as_str())
        .map(|ip| format!("{ip}:6379"))
        .collect();
    for seed in &seeds {
        assert!(
            addresses.contains(seed),
            "seed {seed} is no cluster node of the profile"
        );
    }
}
