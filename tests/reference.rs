//! The manual in `docs/` against what tollgate really accepts and exports, so neither can
//! drift from the other:
//!
//! - every config key the serde types accept has exactly one row, with a default, in a
//!   `| key | type | default | meaning |` table of some `docs/*.md` page, and every such
//!   row names a key that exists;
//! - every `tollgate_*` family a running tollgate exports on `/metrics` has exactly one row in
//!   a `| metric | type | labels | meaning |` table, with its type and labels, and every row
//!   names an exported family;
//! - every endpoint of the admin API's OpenAPI document has exactly one row in a
//!   `| route | what it does |` table (docs/control-plane.md), and every row is an endpoint
//!   or a page the admin listener serves;
//! - every documented default that is one literal (`10s`, `false`) is what the types give
//!   when the key is left out: a config with it written equals the config without it;
//! - every ```yaml block that is a whole config (a top-level `routes:`) passes
//!   `tollgate check`, and so does `config.yaml`.

mod common;
use common::*;

use common::config_keys::{containers, walk_into};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn docs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs")
}

/// Every `docs/*.md` page, by file name, in a stable order.
fn pages() -> Vec<(String, String)> {
    let mut pages: Vec<(String, String)> = std::fs::read_dir(docs_dir())
        .expect("docs/ exists")
        .map(|e| e.expect("docs/ entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| {
            let name = p
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&p).expect("a readable page");
            (name, text)
        })
        .collect();
    pages.sort();
    pages
}

/// The cells of a Markdown table row, split on unescaped `|`, trimmed.
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut escaped = false;
    for c in inner.chars() {
        match c {
            '|' if !escaped => cells.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
        escaped = c == '\\';
    }
    cells.push(cell.trim().to_string());
    cells
}

/// One body row of a table, with where it is written.
struct Row {
    page: String,
    line: usize,
    cells: Vec<String>,
}

impl Row {
    fn at(&self) -> String {
        format!("docs/{}:{}", self.page, self.line)
    }
}

/// The body rows of every table whose header row, in lower case, is `header`.
fn table_rows(header: &[&str]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (page, text) in pages() {
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i + 1 < lines.len() {
            // Any markdown separator row (`| --- |`, `|---|:--|`), so a table written in
            // another style is still read rather than silently left out.
            let separator = lines[i + 1].trim();
            let is_table = lines[i].trim_start().starts_with('|')
                && separator.starts_with('|')
                && separator.contains('-')
                && separator
                    .chars()
                    .all(|c| matches!(c, '|' | '-' | ':' | ' '));
            let matches = is_table
                && cells(lines[i])
                    .iter()
                    .map(|c| c.to_lowercase())
                    .eq(header.iter().map(|h| h.to_string()));
            if !matches {
                i += 1;
                continue;
            }
            i += 2;
            while i < lines.len() && lines[i].trim_start().starts_with('|') {
                rows.push(Row {
                    page: page.clone(),
                    line: i + 1,
                    cells: cells(lines[i]),
                });
                i += 1;
            }
        }
    }
    rows
}

/// The single backticked name a row's first cell holds, if that is all it holds.
fn code_name(cell: &str) -> Option<&str> {
    let name = cell.strip_prefix('`')?.strip_suffix('`')?;
    (!name.is_empty() && !name.contains('`')).then_some(name)
}

/// Every key path the config file accepts, read off the serde types. Fields that take more
/// than one shape (a string or a map) read as leaves there; their maps are walked here.
fn accepted_keys() -> BTreeSet<String> {
    let mut keys = walk_into::<tollgate::config::Config>("");
    keys.extend(walk_into::<tollgate::config::ListenConfig>("listen[]"));
    keys.extend(walk_into::<tollgate::config::BackendConfig>(
        "upstreams.<name>.backends[]",
    ));
    keys
}

/// `a.b[]` → `a.b`, `a.<name>` → `a`: the key a list's or map's element belongs to.
fn owner(path: &str) -> Option<&str> {
    path.strip_suffix("[]")
        .or_else(|| path.strip_suffix(".<name>"))
}

const CONFIG_HEADER: &[&str] = &["key", "type", "default", "meaning"];

#[test]
fn every_config_key_has_one_row_with_a_default_and_every_row_names_a_key() {
    let accepted = accepted_keys();
    assert!(
        accepted.contains("limits.<name>.rate") && accepted.contains("listen[].tls.certs[].cert"),
        "the walk of the config types missed keys it should see: {accepted:#?}"
    );
    let sections = containers(&accepted);
    let rows = table_rows(CONFIG_HEADER);

    let mut problems = Vec::new();
    let mut documented: BTreeMap<String, String> = BTreeMap::new();
    for row in &rows {
        let Some(key) = code_name(&row.cells[0]) else {
            problems.push(format!(
                "{}: the first cell `{}` is not one key path in backticks",
                row.at(),
                row.cells[0]
            ));
            continue;
        };
        if row.cells.len() < 4 || row.cells[1].is_empty() || row.cells[2].is_empty() {
            problems.push(format!(
                "{}: `{key}` needs a type, a default (`required` or `—` when there is none) and a meaning",
                row.at()
            ));
        }
        if !accepted.contains(key) {
            problems.push(format!(
                "{}: `{key}` is documented but the config types have no such key",
                row.at()
            ));
        }
        if let Some(earlier) = documented.insert(key.to_string(), row.at()) {
            problems.push(format!(
                "{}: `{key}` is documented twice (also at {earlier})",
                row.at()
            ));
        }
    }

    for key in &accepted {
        if documented.contains_key(key) || sections.contains(key) {
            continue;
        }
        // A list or map of plain values (`trusted_proxies[]`) is documented by its key.
        if owner(key).is_some_and(|o| documented.contains_key(o)) {
            continue;
        }
        problems.push(format!(
            "`{key}` is accepted by the config types but no docs/*.md table documents it: \
             add a row `| `{key}` | type | default | meaning |` to the page that owns it"
        ));
    }

    assert!(
        problems.is_empty(),
        "the configuration reference has drifted from the config types:\n{}",
        problems.join("\n")
    );
}

/// A config with one of most kinds of section, so that a documented key has its parent to
/// sit in. Lists are walked by their first map element; named maps by the entry picked
/// (limits differ: some keys only make sense on a calendar rate or a response cost).
fn base_config(dir: &Path) -> String {
    let certs = common::certs::generate(dir, "defaults");
    let ratelimit = dir.join("ratelimit");
    std::fs::create_dir_all(&ratelimit).expect("mkdir ratelimit");
    format!(
        "listen:
  - address: 127.0.0.1:8443
    tls:
      certs:
        - {{ cert: {cert}, key: {key} }}
    hsts: {{}}
redis:
  url: redis://127.0.0.1:6379
rls:
  listen: 127.0.0.1:8081
  config_dir: {ratelimit}
upstreams:
  service_a:
    backends:
      - address: 127.0.0.1:9001
    health_check: {{ path: /health }}
limits:
  per_client:
    key: client_ip
    algorithm: sliding_window
    rate: 100/1m
    tiers:
      pro: {{ rate: 200/1m }}
  monthly:
    key: tenant
    algorithm: fixed_window
    rate: 100000/1mo
  tokens:
    key: client_ip
    algorithm: fixed_window
    rate: 100000/1m
    cost: response_json:usage.total_tokens
auth:
  jwt:
    main:
      issuer: https://id.example.com/
      jwks_url: http://127.0.0.1:9/jwks.json
routes:
  - prefix: /a
    upstream: service_a
    limits: [per_client]
    auth: {{ jwt: main }}
",
        cert = certs.server_cert.display(),
        key = certs.server_key.display(),
        ratelimit = ratelimit.display(),
    )
}

/// The map a key path's last segment belongs in, made where it is missing (a missing list
/// cannot be made: `None`).
fn parent_of<'v>(
    root: &'v mut serde_yaml::Value,
    segments: &[&str],
    pick: usize,
) -> Option<&'v mut serde_yaml::Mapping> {
    use serde_yaml::Value;
    let mut at = root;
    for segment in segments {
        let map = at.as_mapping_mut()?;
        at = if *segment == "<name>" {
            map.values_mut().nth(pick)?
        } else if let Some(list) = segment.strip_suffix("[]") {
            let items = map.get_mut(list)?.as_sequence_mut()?;
            items.iter_mut().find(|item| item.is_mapping())?
        } else {
            map.entry(Value::from(*segment))
                .or_insert_with(|| Value::Mapping(Default::default()))
        };
    }
    at.as_mapping_mut()
}

#[test]
fn every_documented_default_is_what_the_config_types_give() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base: serde_yaml::Value =
        serde_yaml::from_str(&base_config(dir.path())).expect("the base config is YAML");
    let parse = |value: &serde_yaml::Value| {
        let text = serde_yaml::to_string(value).expect("YAML out");
        tollgate::config::parse(&text, "defaults.yaml").map(|loaded| loaded.config)
    };
    parse(&base).unwrap_or_else(|e| panic!("the base config does not load: {e}"));

    let accepted = accepted_keys();
    let (mut checked, mut unplaced) = (0, Vec::new());
    let mut problems = Vec::new();
    for row in table_rows(CONFIG_HEADER) {
        // Only a default that is one literal (`10s`, `false`, `[]`) can be set as written;
        // prose ("the address's host", "`true` with `tls`, else `false`") is for people, and
        // so is "unset: `UTC`": a key the types keep as not given, so that giving it where
        // it means nothing (a time zone on a per-minute rate) is an error.
        let (Some(key), Some(literal)) = (
            code_name(&row.cells[0]),
            row.cells.get(2).and_then(|c| code_name(c)),
        ) else {
            continue;
        };
        if key.ends_with("[]") || key.ends_with("<name>") {
            continue;
        }
        let Ok(value) = serde_yaml::from_str::<serde_yaml::Value>(literal) else {
            problems.push(format!(
                "{}: `{key}`'s default `{literal}` is not YAML",
                row.at()
            ));
            continue;
        };
        // A placeholder (`sqlite://<config dir>/...`) or another key's value is for people.
        if literal.contains('<') || accepted.contains(literal) {
            continue;
        }
        let segments: Vec<&str> = key.split('.').collect();
        let (leaf, parents) = segments.split_last().expect("a key has a segment");
        let mut refused = None;
        let mut compared = false;
        for pick in 0..4 {
            let mut without = base.clone();
            let Some(parent) = parent_of(&mut without, parents, pick) else {
                break;
            };
            parent.remove(*leaf);
            let mut with = without.clone();
            if let Some(parent) = parent_of(&mut with, parents, pick) {
                parent.insert(serde_yaml::Value::from(*leaf), value.clone());
            }
            match (parse(&without), parse(&with)) {
                (Ok(implied), Ok(written)) => {
                    compared = true;
                    if implied != written {
                        problems.push(format!(
                            "{}: `{key}` is documented as defaulting to `{literal}`, but \
                             leaving it out gives another config than writing `{key}: {literal}`",
                            row.at()
                        ));
                    }
                    break;
                }
                // Refused here (a timezone on a per-minute rate): try another entry.
                (Ok(_), Err(e)) => refused = Some(e),
                // The section cannot stand with only this key in it (it has required keys
                // the base does not give it): nothing to compare.
                (Err(_), _) => {}
            }
            if !parents.contains(&"<name>") {
                break;
            }
        }
        match (compared, refused) {
            (true, _) => checked += 1,
            (false, Some(e)) => problems.push(format!(
                "{}: writing `{key}: {literal}` (the documented default) is refused: {e}",
                row.at()
            )),
            (false, None) => unplaced.push(key.to_string()),
        }
    }
    eprintln!(
        "{checked} documented defaults compared with the types; not placeable in the base config: {unplaced:?}"
    );
    assert!(
        problems.is_empty(),
        "documented defaults differ from the config types':\n{}",
        problems.join("\n")
    );
    // Most literal defaults must be compared, or this test proves little: a base config
    // that lost its sections would leave them all out.
    assert!(
        checked >= 4 * unplaced.len() && checked >= 60,
        "only {checked} defaults compared; give the base config the sections of {unplaced:?}"
    );
}

/// The ```yaml blocks of a Markdown text, each with the line its first line is on.
fn yaml_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String, usize)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed.starts_with("```yaml") || trimmed.starts_with("```yml") => {
                current = Some((i + 2, String::new(), line.len() - trimmed.len()));
            }
            Some(_) if trimmed.starts_with("```") => {
                let (at, body, _) = current.take().expect("an open block");
                blocks.push((at, body));
            }
            Some((_, body, indent)) => {
                // A block inside a list item is indented; its YAML is not.
                body.push_str(line.get(*indent..).unwrap_or(line.trim_start()));
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

/// A block is a whole config when `routes` is one of its top-level keys.
fn is_whole_config(yaml: &str) -> bool {
    yaml.lines().any(|l| l.starts_with("routes:"))
}

#[test]
fn every_whole_config_in_the_docs_passes_tollgate_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = vec![(
        "README.md".to_string(),
        std::fs::read_to_string(root.join("README.md")).expect("README.md"),
    )];
    sources.extend(pages().into_iter().map(|(n, t)| (format!("docs/{n}"), t)));

    let dir = tempfile::tempdir().expect("tempdir");
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    let mut check = |name: String, path: &Path| {
        let out = output_within(
            std::process::Command::new(tollgate_bin())
                .args(["check", "-c"])
                .arg(path),
            std::time::Duration::from_secs(30),
        );
        if !out.status.success() {
            failures.push(format!(
                "{name}: `tollgate check` refused it ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        checked.push(name);
    };
    for (source, text) in &sources {
        for (line, yaml) in yaml_blocks(text) {
            if !is_whole_config(&yaml) {
                continue;
            }
            let path = dir
                .path()
                .join(format!("block{line}-{}.yaml", source.replace('/', "-")));
            std::fs::write(&path, &yaml).expect("write the block");
            check(format!("{source}:{line}"), &path);
        }
    }
    // The documented example config the demo runs on.
    check("config.yaml".to_string(), &root.join("config.yaml"));

    assert!(
        failures.is_empty(),
        "examples in the docs that tollgate refuses:\n\n{}",
        failures.join("\n\n")
    );
    // The calendar quota and first-policy examples, and config.yaml, at least.
    assert!(
        checked.len() >= 3,
        "only {checked:?} were checked: are the docs' ```yaml blocks still found?"
    );
}

/// A tollgate with every part that exports metrics switched on: a TLS listener (after one
/// handshake), Redis, a health-checked upstream, a policy that may delay requests, one
/// charged from the response, a JWT provider, and the Envoy rate limit service (after one call).
struct Running {
    t: Tollgate,
    _stub: Stub,
    _redis: Redis,
    _certs_dir: tempfile::TempDir,
}

fn running() -> Running {
    let certs_dir = tempfile::tempdir().expect("tempdir");
    let certs = common::certs::generate(certs_dir.path(), "reference");
    let redis = Redis::start();
    let stub = Stub::start("a");
    let ratelimit = certs_dir.path().join("ratelimit");
    std::fs::create_dir_all(&ratelimit).expect("mkdir ratelimit");
    std::fs::write(
        ratelimit.join("reference.yaml"),
        "domain: reference\ndescriptors:\n  - key: k\n    rate_limit: { unit: minute, requests_per_unit: 100 }\n",
    )
    .expect("write the RLS config");
    let rls: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let t = Tollgate::start(&format!(
        "rls:
  listen: {rls}
  config_dir: {ratelimit}
listen:
  - {{proxy_listen}}
  - address: {{tls_listen}}
    tls:
      certs:
        - {{ cert: {cert}, key: {key} }}
redis:
  url: {redis}
upstreams:
  service_a:
    backends: [{stub}]
    health_check: {{ path: /health, interval: 200ms, timeout: 100ms }}
limits:
  waits:
    key: client_ip
    algorithm: token_bucket
    rate: 1000/1s
    on_limit: delay
  spent:
    key: client_ip
    algorithm: fixed_window
    rate: 1000/1m
    cost: response_header:x-usage
auth:
  jwt:
    main:
      issuer: \"https://id.example.com/\"
      # Nothing listens there: the provider's metrics exist from the start all the same.
      jwks_url: http://127.0.0.1:{jwks_port}/jwks.json
routes:
  - prefix: /a
    upstream: service_a
    limits: [waits]
  - prefix: /orders
    upstream: service_a
    auth: {{ jwt: main, optional: true }}
    limits: [spent]
",
        jwks_port = free_port(),
        ratelimit = ratelimit.display(),
        cert = certs.server_cert.display(),
        key = certs.server_key.display(),
        redis = redis.url(),
        stub = stub.address(),
    ));
    t.wait_redis_up(std::time::Duration::from_secs(10));
    assert_eq!(get(&t.url("/a/x")).status, 200);
    let tls = common::tls::client_config(&certs.ca_cert, &["http/1.1"]);
    let mut conn = common::tls::TlsConn::connect(t.tls, "localhost", &tls)
        .unwrap_or_else(|e| panic!("TLS handshake with {}: {e}", t.tls));
    let answer = conn.get("localhost", "/a/tls").expect("a request over TLS");
    assert!(answer.starts_with("HTTP/1.1 200"), "over TLS: {answer}");
    should_rate_limit_once(rls);
    Running {
        t,
        _stub: stub,
        _redis: redis,
        _certs_dir: certs_dir,
    }
}

/// Each `tollgate_*` family of an exposition: its `# TYPE` and the label names its samples
/// carry (without a histogram's `le`).
fn families(exposition: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            families.entry(name.to_string()).or_default().0 = kind.to_string();
        }
    }
    for line in exposition.lines().filter(|l| !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let sample = &line[..name_end];
        let family = [
            sample,
            sample.trim_end_matches("_bucket"),
            sample.trim_end_matches("_sum"),
            sample.trim_end_matches("_count"),
        ]
        .into_iter()
        .find(|f| families.contains_key(*f));
        let (Some(family), Some(labels)) = (family, line[name_end..].strip_prefix('{')) else {
            continue;
        };
        let labels = labels.split('}').next().unwrap_or("");
        let names = labels
            .split(',')
            .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim().to_string()))
            .filter(|k| k != "le");
        if let Some(entry) = families.get_mut(family) {
            entry.1.extend(names);
        }
    }
    families.retain(|name, _| name.starts_with("tollgate_"));
    families
}

/// The backticked names in a cell: `` `route`, `method` `` → {route, method}.
fn code_names(cell: &str) -> BTreeSet<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

#[test]
fn every_exported_metric_has_one_row_and_every_row_is_exported() {
    let r = running();
    let exposition = wait_for(
        "the request and the TLS handshake to be counted",
        std::time::Duration::from_secs(10),
        || {
            let text = r.t.metrics();
            (text.contains("tollgate_requests_total{")
                && text.contains("tollgate_tls_handshakes_total{")
                && text.contains("tollgate_rls_requests_total{"))
            .then_some(text)
        },
    );
    let exported = families(&exposition);
    let rows = table_rows(&["metric", "type", "labels", "meaning"]);

    let mut problems = Vec::new();
    let mut documented: BTreeMap<String, String> = BTreeMap::new();
    for row in &rows {
        let Some(name) = code_name(&row.cells[0]) else {
            problems.push(format!(
                "{}: the first cell `{}` is not one metric name in backticks",
                row.at(),
                row.cells[0]
            ));
            continue;
        };
        if let Some(earlier) = documented.insert(name.to_string(), row.at()) {
            problems.push(format!(
                "{}: `{name}` is documented twice (also at {earlier})",
                row.at()
            ));
        }
        let Some((kind, labels)) = exported.get(name) else {
            problems.push(format!(
                "{}: `{name}` is documented but a running tollgate does not export it",
                row.at()
            ));
            continue;
        };
        let written_kind = row.cells.get(1).map(String::as_str).unwrap_or("");
        if written_kind != kind {
            problems.push(format!(
                "{}: `{name}` is a {kind}, documented as `{written_kind}`",
                row.at()
            ));
        }
        let written_labels = code_names(row.cells.get(2).map(String::as_str).unwrap_or(""));
        if !labels.is_empty() && &written_labels != labels {
            problems.push(format!(
                "{}: `{name}` carries the labels {labels:?}, documented as {written_labels:?}",
                row.at()
            ));
        }
    }
    for name in exported.keys() {
        if !documented.contains_key(name) {
            problems.push(format!(
                "`{name}` is exported on /metrics but no docs/*.md metric table documents it: \
                 add a row `| `{name}` | type | labels | meaning |` (docs/operations.md#metrics, or the page of its feature)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the metric tables have drifted from /metrics:\n{}\n\nexported: {:?}",
        problems.join("\n"),
        exported.keys().collect::<Vec<_>>()
    );
}

#[test]
fn every_admin_endpoint_has_one_row_and_every_row_is_an_endpoint() {
    let r = running();
    let agent = agent();
    let document = get_with(&agent, &r.t.admin_url("/admin/openapi.json"), &[]).json();
    let paths = document["paths"]
        .as_object()
        .expect("the OpenAPI document has paths");
    let mut api = BTreeSet::new();
    for (path, item) in paths {
        for method in item.as_object().expect("a path item").keys() {
            if ["get", "put", "post", "delete", "patch", "head", "options"]
                .contains(&method.as_str())
            {
                api.insert(format!("{} {path}", method.to_uppercase()));
            }
        }
    }
    assert!(api.len() >= 10, "the OpenAPI document lists only {api:?}");

    let rows = table_rows(&["route", "what it does"]);
    let mut problems = Vec::new();
    let mut documented: BTreeMap<String, String> = BTreeMap::new();
    for row in &rows {
        let endpoint = code_name(&row.cells[0]).and_then(|c| {
            let (method, target) = c.split_once(' ')?;
            let path = target.split('?').next()?;
            Some(format!("{method} {path}"))
        });
        let Some(endpoint) = endpoint else {
            problems.push(format!(
                "{}: the first cell `{}` is not one `METHOD /path` in backticks",
                row.at(),
                row.cells[0]
            ));
            continue;
        };
        if let Some(earlier) = documented.insert(endpoint.clone(), row.at()) {
            problems.push(format!(
                "{}: `{endpoint}` is documented twice (also at {earlier})",
                row.at()
            ));
        }
        if api.contains(&endpoint) {
            continue;
        }
        // The dashboard's pages are served beside the API, outside its document.
        let page = endpoint
            .strip_prefix("GET ")
            .map(|path| get_with(&agent, &r.t.admin_url(path), &[]));
        let is_page = page.is_some_and(|p| {
            p.status == 200
                && p.header("content-type")
                    .is_some_and(|t| t.starts_with("text/html"))
        });
        if !is_page {
            problems.push(format!(
                "{}: `{endpoint}` is documented but is neither in the OpenAPI document nor a page the admin listener serves",
                row.at()
            ));
        }
    }
    for endpoint in &api {
        if !documented.contains_key(endpoint) {
            problems.push(format!(
                "`{endpoint}` is in the OpenAPI document but no docs/*.md `| route | what it does |` table documents it \
                 (docs/control-plane.md#admin-api)"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "the admin API's documentation has drifted from its OpenAPI document:\n{}",
        problems.join("\n")
    );
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn check_points_each_error_to_a_reference_section_that_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (key, target) in tollgate::check::REFERENCE {
        let (page, fragment) = target.split_once('#').expect("page#anchor");
        let text = std::fs::read_to_string(root.join(page))
            .unwrap_or_else(|e| panic!("`{key}` points to {page}, which cannot be read: {e}"));
        let anchors: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.strip_prefix('#'))
            .map(|h| anchor(h.trim_start_matches('#')))
            .collect();
        assert!(
            anchors.contains(fragment),
            "`{key}` points to {target}, but {page} has no such heading; it has {anchors:?}"
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "upstreams:
  a: { backends: [\"127.0.0.1:1\"] }
limits:
  per_ip: { key: client_ip, algorithm: fixed_window, rate: 5/2d }
routes:
  - { prefix: /a, upstream: a, limits: [per_ip] }
",
    )
    .expect("write config");
    let out = output_within(
        std::process::Command::new(tollgate_bin())
            .args(["check", "-c"])
            .arg(&path),
        std::time::Duration::from_secs(30),
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "an invalid config: {report}");
    assert!(
        report.contains("limits.per_ip.rate: ")
            && report.contains("\n  see docs/configuration.md#limits\n"),
        "the error about `limits.per_ip.rate` should be followed by its reference section:\n{report}"
    );
}

/// One `ShouldRateLimit` call, so the RLS counters of its descriptor exist.
fn should_rate_limit_once(addr: std::net::SocketAddr) {
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::rate_limit_descriptor::Entry;
    use envoy_types::pb::envoy::extensions::common::ratelimit::v3::RateLimitDescriptor;
    use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
    use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut client = loop {
            match RateLimitServiceClient::connect(format!("http://{addr}")).await {
                Ok(c) => break c,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("the rate limit service on {addr} does not answer: {e}")
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        let request = RateLimitRequest {
            domain: "reference".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry {
                    key: "k".into(),
                    value: "v".into(),
                }],
                ..Default::default()
            }],
            hits_addend: 0,
        };
        client
            .should_rate_limit(request)
            .await
            .expect("a ShouldRateLimit answer");
    });
}
