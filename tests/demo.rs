//! `tollgate demo`, the README's first command: on the repository's own `config.yaml` (moved
//! to free ports), it starts the stub services nothing listens on yet, prints the URLs to
//! try, and proxies `/a` to service A and `/b` to service B with the config's limits.

mod common;
use common::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn demo_brings_up_stubs_and_proxy_from_the_example_config() {
    let redis = Redis::start();
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let example = std::fs::read_to_string(root.join("config.yaml")).unwrap();
    let (proxy, admin, a, b) = (free_port(), free_port(), free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let moved = [
        ("0.0.0.0:8000", format!("127.0.0.1:{proxy}")),
        ("127.0.0.1:9000", format!("127.0.0.1:{admin}")),
        ("127.0.0.1:8001", format!("127.0.0.1:{a}")),
        ("127.0.0.1:8002", format!("127.0.0.1:{b}")),
        ("redis://127.0.0.1:6379", redis.url()),
    ];
    let mut config = example.clone();
    for (from, to) in &moved {
        assert!(config.contains(from), "config.yaml no longer has {from}");
        config = config.replace(from, to);
    }
    config.push_str(&format!(
        "server:\n  pid_file: {0}/t.pid\n  upgrade_sock: {0}/u.sock\n",
        dir.path().display()
    ));
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config).unwrap();

    let mut child = Command::new(tollgate_bin())
        .args(["demo", "-c"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tollgate demo");
    let printed = Arc::new(Mutex::new(String::new()));
    let out = child.stdout.take().unwrap();
    let sink = printed.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let mut text = sink.lock().unwrap();
            text.push_str(&line);
            text.push('\n');
        }
    });
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Stop(child);

    let agent = agent();
    let through = |route: &str| {
        wait_for(
            &format!("demo proxying {route}"),
            Duration::from_secs(10),
            || {
                let r = try_get_with(
                    &agent,
                    &format!("http://127.0.0.1:{proxy}{route}/hello"),
                    &[],
                )
                .ok()?;
                (r.status == 200).then_some(r)
            },
        )
    };
    assert_eq!(through("/a").json()["service"], "a");
    let from_b = through("/b");
    assert_eq!(from_b.json()["service"], "b");
    assert!(
        from_b.header("ratelimit-policy").is_some(),
        "the example's limits apply"
    );
    let health = get(&format!("http://127.0.0.1:{proxy}/health"));
    assert_eq!(health.status, 200);
    assert_eq!(
        get(&format!("http://127.0.0.1:{admin}/metrics")).status,
        200
    );

    let banner = wait_for("the banner", Duration::from_secs(5), || {
        let text = printed.lock().unwrap().clone();
        text.contains("/metrics").then_some(text)
    });
    for expected in [
        "stub service a".to_string(),
        format!("http://127.0.0.1:{a}"),
        "stub service b".to_string(),
        format!("http://127.0.0.1:{b}"),
        format!("curl -i http://127.0.0.1:{proxy}/a/hello"),
        format!("curl -i http://127.0.0.1:{proxy}/b/hello"),
        format!("curl http://127.0.0.1:{admin}/metrics"),
    ] {
        assert!(banner.contains(&expected), "`{expected}` not in:\n{banner}");
    }

    // Ctrl-C stops the whole demo at once.
    send_signal(&child.0, libc::SIGINT);
    wait_for("the demo to stop", Duration::from_secs(5), || {
        child.0.try_wait().ok().flatten()
    });
}
