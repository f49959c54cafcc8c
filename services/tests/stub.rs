//! The stub binary itself: what tollgate's tests and benchmarks rely on it to do.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Running(Child, SocketAddr);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> Running {
    // Port 0 and the address the stub prints: a port picked free beforehand can be taken
    // by another test's stub before this one binds it, and then the wrong stub answers.
    let mut child = Command::new(env!("CARGO_BIN_EXE_stub-service"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .unwrap_or_else(|| panic!("stub-service printed no address: {line:?}"));
    Running(child, addr)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

fn get(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.call().unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().read_to_string().unwrap();
    (status, serde_json::from_str(&body).unwrap())
}

#[test]
fn answers_any_path_and_method_with_its_name() {
    let stub = start(&["--name", "a"]);
    let agent = agent();
    let (status, body) = get(&agent, &format!("http://{}/a/x?y=1", stub.1), &[]);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"service": "a", "method": "GET", "path": "/a/x", "query": "y=1"})
    );
    let resp = agent
        .post(&format!("http://{}/anything", stub.1))
        .send("payload")
        .unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&resp.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(body["method"], "POST");
    assert_eq!(body["body_bytes"], 7);
    let (status, body) = get(&agent, &format!("http://{}/health", stub.1), &[]);
    assert_eq!((status, &body["status"]), (200, &serde_json::json!("ok")));
}

#[test]
fn delays_fails_and_echoes_on_request() {
    let stub = start(&["--name", "b", "--fail-rate", "1.0"]);
    let agent = agent();
    let started = Instant::now();
    let (status, body) = get(
        &agent,
        &format!("http://{}/x", stub.1),
        &[
            ("x-stub-delay-ms", "200"),
            ("x-stub-echo", "headers"),
            ("x-probe", "1"),
        ],
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_eq!(status, 500);
    assert_eq!(body["error"], "injected failure");
    assert_eq!(body["headers"]["x-probe"], "1");
    // Health checks never fail, whatever the failure rate.
    let (status, _) = get(&agent, &format!("http://{}/health", stub.1), &[]);
    assert_eq!(status, 200);
    let (_, stats) = get(&agent, &format!("http://{}/_stub/stats", stub.1), &[]);
    assert_eq!(stats["answered"], 1);
}

#[test]
fn reports_token_usage_in_json_when_asked() {
    let stub = start(&["--name", "a"]);
    let agent = agent();
    let url = format!("http://{}/v1/chat", stub.1);
    let (status, body) = get(&agent, &url, &[("x-stub-usage", "150")]);
    assert_eq!(status, 200);
    assert_eq!(
        body,
        serde_json::json!({"service": "a", "method": "GET", "path": "/v1/chat",
                           "usage": {"total_tokens": 150}})
    );
    // Without the header the body stays as it always was.
    let (_, body) = get(&agent, &url, &[]);
    assert!(body.get("usage").is_none(), "{body}");
}

#[test]
fn streams_server_sent_events_with_usage_in_the_last() {
    let stub = start(&["--name", "a"]);
    let agent = agent();
    let resp = agent
        .get(&format!("http://{}/v1/chat", stub.1))
        .header("x-stub-sse", "5")
        .header("x-stub-usage", "42")
        .call()
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    // Sent as chunks, as a stream is: no length known up front.
    assert_eq!(header("content-length"), None);
    let text = resp.into_body().read_to_string().unwrap();
    let events: Vec<serde_json::Value> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect();
    assert_eq!(events.len(), 5, "{text}");
    assert!(
        events[..4].iter().all(|e| e.get("usage").is_none()),
        "{text}"
    );
    assert_eq!(events[4]["usage"]["total_tokens"], 42, "{text}");

    // Without a usage, the last event is one more delta; the count is bounded.
    let text = agent
        .get(&format!("http://{}/v1/chat", stub.1))
        .header("x-stub-sse", "1000000")
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    assert_eq!(text.matches("data: ").count(), stub_service::MAX_SSE_EVENTS);
    assert!(!text.contains("usage"));
}

#[test]
fn refuses_bad_options() {
    let out = Command::new(env!("CARGO_BIN_EXE_stub-service"))
        .args(["--fail-rate", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0.0 to 1.0"));
}
