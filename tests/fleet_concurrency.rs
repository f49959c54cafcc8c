//! Concurrency across the fleet: `algorithm: concurrency` with `scope: global` holds at
//! most `limit` requests of a key in flight on all nodes together, and a node that dies
//! gives its slots back within seconds. Three tollgate processes share one real Redis in
//! front of a backend that counts the requests it has in flight.

mod common;
use common::h2load;
use common::usage_backend::UsageBackend;
use common::ws::EchoServer;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const LIMIT: u64 = 6;
const ADMIN_TOKEN: &str = "fleet-concurrency-admin-token-0123";

/// One policy, `in_flight`, of `LIMIT` requests in flight per client address fleet-wide.
///
/// `redis.timeout` is raised from its 25 ms: on a busy 2-core machine an acquire (atomic)
/// or a first grant (async) can take longer than that, and a node would then decide on its
/// own share (`on_redis_error: open`), which is a Redis-failure test's business, not this
/// one's. `sync_interval` stays at its 50 ms default, so reservations live 2 s.
fn config(redis: &Redis, backend: &UsageBackend, sync: &str) -> String {
    config_with(redis, backend, sync, "")
}

/// `config` with `extra` lines in the policy.
fn config_with(redis: &Redis, backend: &UsageBackend, sync: &str, extra: &str) -> String {
    format!(
        "redis:
  url: {}
  timeout: 500ms
upstreams:
  llm:
    backends: [{}]
limits:
  in_flight:
    key: client_ip
    algorithm: concurrency
    limit: {LIMIT}
    scope: global
    sync: {sync}
{extra}routes:
  - prefix: /llm
    upstream: llm
    limits: [in_flight]
",
        redis.url(),
        backend.address()
    )
}

fn fleet(config: &str) -> Vec<Tollgate> {
    Tollgate::fleet(config, 3)
}

/// An agent that outwaits the longest request here (the harness's gives up at 10 s).
fn patient_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// A client that sends `path` to `url` until one request gets past the limit (anything
/// but a 429), 50 ms apart, until `stop`. Returns whether one did.
fn client_until_admitted(url: String, stop: Arc<AtomicBool>) -> JoinHandle<bool> {
    std::thread::spawn(move || {
        let agent = patient_agent();
        while !stop.load(Ordering::Relaxed) {
            match try_get_with(&agent, &url, &[]) {
                Ok(r) if r.status == 429 => std::thread::sleep(Duration::from_millis(50)),
                // A 200, or an error because its node was killed under it.
                _ => return true,
            }
        }
        false
    })
}

#[test]
fn a_fleet_wide_limit_holds_under_24_clients_on_three_nodes() {
    for sync in ["atomic", "async"] {
        let redis = Redis::start();
        let backend = UsageBackend::start();
        let nodes = fleet(&config(&redis, &backend, sync));
        // 24 clients, 8 a node, each sending requests the backend holds 300 ms, for 3 s.
        // A refused client waits 50 ms and asks again, so the limit is always pressed.
        let deadline = Instant::now() + Duration::from_secs(3);
        let admitted = Arc::new(AtomicU64::new(0));
        let refused = Arc::new(AtomicU64::new(0));
        let clients: Vec<JoinHandle<()>> = (0..24)
            .map(|i| {
                let url = nodes[i % 3].url("/llm/slow/300");
                let (admitted, refused) = (admitted.clone(), refused.clone());
                std::thread::spawn(move || {
                    let agent = patient_agent();
                    while Instant::now() < deadline {
                        match try_get_with(&agent, &url, &[]).map(|r| r.status) {
                            Ok(200) => {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(429) => {
                                refused.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(50));
                            }
                            other => panic!("{sync}: unexpected answer {other:?}"),
                        }
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().expect("client");
        }
        let (admitted, refused) = (
            admitted.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        );
        let most = backend.max_in_flight();
        eprintln!("{sync}: at most {most} in flight, {admitted} admitted, {refused} refused");
        assert!(
            most <= LIMIT,
            "{sync}: the backend had {most} requests in flight at once; the fleet's limit is {LIMIT}"
        );
        // The limit is used, not only respected. At least 5 of 6 at once: a slot freed on
        // one node may wait a sync round (50 ms) before another node's lease takes it up,
        // but with 24 clients pressing, some moment has 5 or 6 in flight on a machine
        // however busy (measured: 6 in both modes).
        assert!(
            most >= LIMIT - 1,
            "{sync}: at most {most} requests ran at once; the fleet should use its {LIMIT} slots"
        );
        // 3 s of 300 ms requests on 6 slots is at most 60; a third of that leaves room
        // for a slow machine and still shows the slots turning over.
        assert!(
            admitted >= 20,
            "{sync}: only {admitted} requests admitted in 3 s ({refused} refused)"
        );
        assert!(
            refused > 0,
            "{sync}: 24 clients against 6 slots were never refused"
        );
        drop(nodes);
    }
}

#[test]
fn a_killed_nodes_slots_come_back_within_five_seconds() {
    for sync in ["atomic", "async"] {
        let redis = Redis::start();
        let backend = UsageBackend::start();
        let mut nodes = fleet(&config(&redis, &backend, sync));
        let stop = Arc::new(AtomicBool::new(false));
        // Node 0 takes every slot with requests the backend holds for 15 s: far longer
        // than this test waits after the kill, so they stay in flight at the backend.
        let holders: Vec<JoinHandle<bool>> = (0..LIMIT)
            .map(|_| client_until_admitted(nodes[0].url("/llm/slow/15000"), stop.clone()))
            .collect();
        wait_for(
            &format!("{sync}: node 0 holding all {LIMIT} slots"),
            Duration::from_secs(10),
            || (backend.in_flight() == LIMIT).then_some(()),
        );
        // The other nodes see the fleet's slots all taken.
        for node in &nodes[1..] {
            let r = get_with(&agent(), &node.url("/llm/slow/1"), &[]);
            assert_eq!(r.status, 429, "{sync}: every slot is in use on node 0");
        }
        nodes[0].signal(libc::SIGKILL);
        let killed = Instant::now();
        assert!(
            nodes[0].wait_exit(Duration::from_secs(5)).is_some(),
            "{sync}: node 0 did not die"
        );
        // The backend still holds node 0's six requests (it does not notice their client
        // is gone), so the survivors' requests show above them.
        let comers: Vec<JoinHandle<bool>> = (0..LIMIT as usize)
            .map(|i| client_until_admitted(nodes[1 + i % 2].url("/llm/slow/8000"), stop.clone()))
            .collect();
        // Node 0's holdings lapse 2 s after its last renewal (20 syncs of 50 ms), and the
        // survivors ask again every sync; 5 s leaves 3 s for a loaded machine.
        let back = wait_for(
            &format!("{sync}: the survivors admitting {LIMIT} again"),
            Duration::from_secs(6),
            || (backend.in_flight() >= 2 * LIMIT).then(|| killed.elapsed()),
        );
        eprintln!("{sync}: the killed node's slots were back after {back:?}");
        assert!(
            back <= Duration::from_secs(5),
            "{sync}: the killed node's slots came back after {back:?}, the bound is 5 s"
        );
        // And no more than the limit: one more client stays refused.
        let r = get_with(&agent(), &nodes[1].url("/llm/slow/1"), &[]);
        assert_eq!(
            r.status, 429,
            "{sync}: the survivors hold all {LIMIT} slots"
        );
        assert!(
            backend.in_flight() <= 2 * LIMIT,
            "{sync}: {} in flight: node 0's {LIMIT} and at most {LIMIT} more",
            backend.in_flight()
        );
        // Their requests end with the nodes; the clients are not waited for.
        stop.store(true, Ordering::Relaxed);
        drop((holders, comers));
        drop(nodes);
    }
}

#[test]
fn without_redis_each_node_holds_its_share_or_refuses_as_the_policy_says() {
    for (sync, on_redis_error) in [("async", "open"), ("atomic", "closed")] {
        let mut redis = Redis::start();
        let backend = UsageBackend::start();
        let nodes = fleet(&config_with(
            &redis,
            &backend,
            sync,
            &format!("    on_redis_error: {on_redis_error}\n"),
        ));
        kill_redis(&mut redis, &nodes, sync);
        if on_redis_error == "closed" {
            let r = get_with(&agent(), &nodes[0].url("/llm/slow/1"), &[]);
            assert_eq!(r.status, 503, "{sync}: closed without Redis");
            continue;
        }
        // Open: node 0 admits its share of 6 among the 3 live nodes it last heard of, 2,
        // counting both requests it already has in flight (held 3 s, far longer than the
        // checks below take).
        let stop = Arc::new(AtomicBool::new(false));
        let holders: Vec<JoinHandle<bool>> = (0..2)
            .map(|_| client_until_admitted(nodes[0].url("/llm/slow/3000"), stop.clone()))
            .collect();
        wait_for(
            &format!("{sync}: node 0 admitting its share"),
            Duration::from_secs(5),
            || (backend.in_flight() == 2).then_some(()),
        );
        let r = get_with(&agent(), &nodes[0].url("/llm/slow/1"), &[]);
        assert_eq!(
            r.status, 429,
            "{sync}: a third request is past node 0's share of 2"
        );
        assert_eq!(
            nodes[0].metric(
                "tollgate_ratelimit_decisions_total{policy=\"in_flight\",result=\"failed_open\"}"
            ),
            Some(2.0),
            "{sync}: both were admitted on the node's share"
        );
        stop.store(true, Ordering::Relaxed);
        drop(holders);
    }
}

/// Kills Redis and waits until every node has seen it go.
fn kill_redis(redis: &mut Redis, nodes: &[Tollgate], sync: &str) {
    redis.kill();
    wait_for(
        &format!("{sync}: every node seeing Redis gone"),
        Duration::from_secs(10),
        || {
            nodes
                .iter()
                .all(|n| n.metric("tollgate_redis_up") == Some(0.0))
                .then_some(())
        },
    );
}

/// A WebSocket through `node` to `path`, or the status that refused the upgrade.
fn ws_connect(
    node: &Tollgate,
    path: &str,
) -> Result<tungstenite::WebSocket<std::net::TcpStream>, u16> {
    let stream = std::net::TcpStream::connect(node.proxy).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    match tungstenite::client(format!("ws://{}{path}", node.proxy), stream) {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(resp))) => {
            Err(resp.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}

#[test]
fn open_websockets_hold_fleet_wide_slots_for_their_whole_life() {
    for sync in ["async", "atomic"] {
        let redis = Redis::start();
        let echo = EchoServer::start();
        let nodes = fleet(&format!(
            "admin:
  listen: {{admin_listen}}
  token: {ADMIN_TOKEN}
redis:
  url: {}
  timeout: 500ms
upstreams:
  echo:
    backends: [{}]
limits:
  sockets:
    key: client_ip
    algorithm: concurrency
    limit: 2
    scope: global
    sync: {sync}
routes:
  - prefix: /ws
    upstream: echo
    limits: [sockets]
",
            redis.url(),
            echo.addr
        ));
        let first = ws_connect(&nodes[0], "/ws/echo")
            .unwrap_or_else(|s| panic!("{sync}: first socket: {s}\n{}", nodes[0].logs()));
        let mut second = ws_connect(&nodes[1], "/ws/echo")
            .unwrap_or_else(|s| panic!("{sync}: second socket: {s}\n{}", nodes[1].logs()));
        // Idle for longer than a sync and a renewal: the open sockets still hold their
        // slots, on whichever node they came through.
        std::thread::sleep(Duration::from_millis(800));
        for node in &nodes {
            assert_eq!(
                ws_connect(node, "/ws/echo").err(),
                Some(429),
                "{sync}: two sockets are open fleet-wide"
            );
        }
        assert_eq!(
            echo.open_now(),
            2,
            "{sync}: the refused upgrades never reached the backend"
        );
        // A node with no socket of its own sees the fleet's two in the admin API.
        let usage = get_with(
            &agent(),
            &nodes[2].admin_url("/admin/limits/sockets/127.0.0.1"),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        )
        .json();
        assert_eq!(usage["used"], 2, "{sync}: {usage}");
        assert_eq!(usage["remaining"], 0, "{sync}: {usage}");
        assert_eq!(usage["source"], "redis", "{sync}: {usage}");
        // Closing one frees its slot for any node.
        drop(first);
        let third = wait_for(
            &format!("{sync}: a slot freed by a closed socket"),
            Duration::from_secs(5),
            || ws_connect(&nodes[2], "/ws/echo").ok(),
        );
        second
            .send(tungstenite::Message::text("ping"))
            .expect("send");
        assert_eq!(
            second.read().expect("read"),
            tungstenite::Message::text("ping"),
            "{sync}: the socket that held its slot still works"
        );
        drop((second, third));
    }
}

#[test]
fn http2_streams_hold_fleet_wide_slots_for_their_whole_life() {
    for sync in ["async", "atomic"] {
        let redis = Redis::start();
        let backend = UsageBackend::start();
        let nodes = fleet(&format!(
            "listen:
  - address: {{proxy_listen}}
    http2: true
{}",
            config(&redis, &backend, sync)
        ));
        // One prior-knowledge h2c connection a node, 8 streams each, all sent at once and
        // held 2 s by the backend: 24 streams against 6 slots fleet-wide.
        let loads: Vec<JoinHandle<(u64, u64, String)>> = nodes
            .iter()
            .map(|n| {
                let url = n.url("/llm/slow/2000");
                std::thread::spawn(move || h2load::h2load(&url, &["-c1", "-m8", "-n8"]))
            })
            .collect();
        let results: Vec<(u64, u64, String)> = loads
            .into_iter()
            .map(|l| l.join().expect("h2load"))
            .collect();
        let ok: u64 = results.iter().map(|r| r.0).sum();
        let limited: u64 = results.iter().map(|r| r.1).sum();
        let text: String = results.iter().map(|r| r.2.as_str()).collect();
        assert!(text.contains("Application protocol: h2c"), "{sync}: {text}");
        assert_eq!(ok + limited, 24, "{sync}: every stream answered\n{text}");
        let most = backend.max_in_flight();
        assert!(
            most <= LIMIT,
            "{sync}: {most} streams reached the backend at once; the fleet's limit is {LIMIT}\n{text}"
        );
        // Some moment has 5 or 6 in flight: a freed slot may wait a sync (50 ms) to move.
        assert!(
            most >= LIMIT - 1,
            "{sync}: at most {most} streams ran at once\n{text}"
        );
        assert!(
            limited > 0,
            "{sync}: 24 streams on 6 slots were never refused"
        );
        // Ended streams gave their slots back: six more streams on one node all pass.
        wait_for(
            &format!("{sync}: six streams admitted once the first ones ended"),
            Duration::from_secs(10),
            || {
                let (ok, _, _) =
                    h2load::h2load(&nodes[1].url("/llm/slow/1"), &["-c1", "-m6", "-n6"]);
                (ok == LIMIT).then_some(())
            },
        );
    }
}

#[test]
fn slots_admitted_without_redis_are_claimed_when_it_comes_back() {
    for sync in ["atomic", "async"] {
        let mut redis = Redis::start();
        let backend = UsageBackend::start();
        let nodes = fleet(&format!(
            "admin:
  listen: {{admin_listen}}
  token: {ADMIN_TOKEN}
{}",
            // Room for a slow first grant once Redis is back: see below.
            config(&redis, &backend, sync).replace("timeout: 500ms", "timeout: 2s")
        ));
        kill_redis(&mut redis, &nodes, sync);
        // Node 0 admits two long requests on its share (2 of 6 among 3 nodes).
        let stop = Arc::new(AtomicBool::new(false));
        let holders: Vec<JoinHandle<bool>> = (0..2)
            .map(|_| client_until_admitted(nodes[0].url("/llm/slow/25000"), stop.clone()))
            .collect();
        wait_for(
            &format!("{sync}: node 0 admitting its share"),
            Duration::from_secs(10),
            || (backend.in_flight() == 2).then_some(()),
        );
        redis.restart();
        // Once Redis is back, the fleet's count covers the two requests still running.
        wait_for(
            &format!("{sync}: the two requests admitted alone counted in Redis"),
            Duration::from_secs(10),
            || {
                let usage = try_get_with(
                    &agent(),
                    &nodes[2].admin_url("/admin/limits/in_flight/127.0.0.1"),
                    &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                )
                .ok()?
                .json();
                (usage["source"] == "redis" && usage["used"] == 2).then_some(())
            },
        );
        // Eight requests at once through the other nodes, each held 5 s: only 4 slots are
        // left, and the other four wait for one `redis.timeout` (2 s), then are refused.
        // A node whose Redis answer took longer than that (a machine stalled for 2 s)
        // decides on its own share instead, as `on_redis_error: open` says: such an
        // attempt says nothing about claims, and is made again (the two requests admitted
        // alone run 25 s: the claim, two attempts and their margins).
        let failed_open = |node: &Tollgate| {
            node.metric(
                "tollgate_ratelimit_decisions_total{policy=\"in_flight\",result=\"failed_open\"}",
            )
            .unwrap_or(0.0)
        };
        let agent = patient_agent();
        let mut judged = None;
        for _ in 0..2 {
            let before: f64 = nodes[1..].iter().map(failed_open).sum();
            // Wait for a discarded attempt's requests to end, then count this one's.
            wait_for(
                &format!("{sync}: only the two requests admitted alone in flight"),
                Duration::from_secs(10),
                || (backend.in_flight() == 2).then_some(()),
            );
            backend.reset_max_in_flight();
            let statuses: Vec<u16> = (0..8)
                .map(|i| {
                    let (agent, url) = (agent.clone(), nodes[1 + i % 2].url("/llm/slow/5000"));
                    std::thread::spawn(move || {
                        try_get_with(&agent, &url, &[]).map_or(0, |r| r.status)
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|t| t.join().expect("client"))
                .collect();
            let after: f64 = nodes[1..].iter().map(failed_open).sum();
            if after == before {
                judged = Some(statuses);
                break;
            }
            eprintln!(
                "{sync}: {} decisions failed open in an attempt; made again",
                after - before
            );
        }
        let statuses = judged.unwrap_or_else(|| {
            panic!("{sync}: two attempts in a row decided without Redis (redis.timeout 2 s)")
        });
        let ok = statuses.iter().filter(|&&s| s == 200).count();
        // What Redis holds for the key, for the message.
        let held = ["cz", "c"].map(|suffix| {
            let key = format!("tollgate:rl:{{in_flight|127.0.0.1}}:{suffix}");
            (
                redis.cli(&["ZRANGE", &key, "0", "-1", "WITHSCORES"]),
                redis.cli(&["HGETALL", &key]),
            )
        });
        assert!(
            ok <= 4,
            "{sync}: {ok} admitted beside the 2 admitted without Redis; 4 slots were left: {statuses:?}; Redis now holds {held:?} (TIME {:?})",
            redis.cli(&["TIME"])
        );
        assert!(
            ok >= 1,
            "{sync}: the 4 slots left were not used: {statuses:?}"
        );
        let most = backend.max_in_flight();
        assert!(
            most <= LIMIT,
            "{sync}: {most} requests in flight at once; the fleet's limit is {LIMIT}"
        );
        stop.store(true, Ordering::Relaxed);
        drop((holders, nodes));
    }
}
