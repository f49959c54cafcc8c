//! The dashboard in a real browser: headless Chromium loads it while traffic flows, and
//! the live figures, charts, feed and key inspector must show that traffic; its reload
//! button works from its own origin, and so does its editor of runtime policies and
//! overrides (with If-Match, so a change made meanwhile is refused). A screenshot is
//! saved for a person to look at. Pages of other origins, and a name rebound to the admin
//! listener's address, get nothing.

mod common;
use common::cdp::Browser;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn the_dashboard_shows_live_traffic() {
    let redis = Redis::start();
    let a = Stub::start("a");
    let b = Stub::start("b");
    let t = Tollgate::start(&format!(
        "redis:
  url: {}
upstreams:
  service_a:
    backends: [{}]
    health_check: {{ path: /health, interval: 500ms, timeout: 200ms }}
  service_b:
    backends: [{}]
limits:
  per_client:
    key: client_ip
    algorithm: sliding_window
    rate: 20/1s
  bucket:
    key: client_ip
    algorithm: token_bucket
    rate: 5/s
    burst: 10
  # The stub reports no usage, so each response costs the reserve: 1.
  spent:
    key: client_ip
    algorithm: fixed_window
    rate: 100000/1m
    cost: response_header:x-usage
routes:
  - prefix: /a
    upstream: service_a
    limits: [per_client]
  - prefix: /b
    upstream: service_b
    limits: [bucket]
  - prefix: /c
    upstream: service_b
    limits: [spent]
",
        redis.url(),
        a.address(),
        b.address()
    ));
    // Traffic on both routes, enough to be both admitted and limited.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, urls) = (stop.clone(), [t.url("/a/x"), t.url("/b/y"), t.url("/c/z")]);
        std::thread::spawn(move || {
            let agent = agent();
            while !stop.load(Ordering::Relaxed) {
                for url in &urls {
                    let _ = try_get_with(&agent, url, &[]);
                }
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };

    let mut browser = Browser::start(1400, 1800);
    browser.navigate(&t.admin_url("/"));
    wait_for("the page to load", Duration::from_secs(10), || {
        (browser.eval("document.readyState") == "complete").then_some(())
    });
    let number = |b: &mut Browser, js: &str| b.eval(js).as_f64().unwrap_or(0.0);
    wait_for(
        "non-zero live figures on the dashboard",
        Duration::from_secs(20),
        || {
            let allowed = number(
                &mut browser,
                "Number(document.querySelector('#chart-routes')?.dataset.totalAllowed)",
            );
            let limited = number(
                &mut browser,
                "Number(document.querySelector('#chart-routes')?.dataset.totalLimited)",
            );
            let rps = number(
                &mut browser,
                "Number(document.querySelector('#kpi-allowed-rps')?.dataset.value || 0)",
            );
            let events = number(
                &mut browser,
                "document.querySelectorAll('#events [data-outcome]').length",
            );
            (allowed > 0.0 && limited > 0.0 && rps > 0.0 && events > 0.0).then_some(())
        },
    );
    assert_eq!(
        browser.eval("document.querySelector('#redis-status').textContent.trim()"),
        "up"
    );
    assert_eq!(
        browser.eval("document.querySelectorAll('#chart-legend [data-route]').length"),
        3
    );
    // A response-charged route's decisions show what each response cost.
    wait_for(
        "a live decision with its settled cost",
        Duration::from_secs(10),
        || {
            let shown = browser.eval(
                "[...document.querySelectorAll('#events [data-outcome]')].some(e => / · cost 1$/.test(e.textContent.trim()))",
            );
            (shown == true).then_some(())
        },
    );
    assert!(
        number(
            &mut browser,
            "document.querySelectorAll('#policies tr[data-policy]').length"
        ) >= 2.0
    );
    assert!(
        number(
            &mut browser,
            "document.querySelectorAll('#top-limited tr').length"
        ) >= 1.0
    );
    assert_eq!(
        browser.eval(&format!(
            "document.querySelector('#upstreams [data-backend=\"{}\"]').dataset.up",
            a.address()
        )),
        "true"
    );
    assert_eq!(
        browser.eval("document.querySelector('#reload-status').dataset.result"),
        "ok"
    );

    // The dashboard's own write: "Reload now" posts JSON from the page's origin, which the
    // admin listener's cross-site checks let through.
    let before: u64 = browser
        .eval("document.querySelector('#reload-status').dataset.generation")
        .as_str()
        .and_then(|g| g.parse().ok())
        .expect("the reload status shows a generation");
    browser.eval("document.querySelector('#reload-now').click(), true");
    wait_for(
        "the dashboard's reload to be applied",
        Duration::from_secs(10),
        || {
            let shown = browser.eval("document.querySelector('#reload-status').dataset.generation");
            (shown.as_str().and_then(|g| g.parse::<u64>().ok()) > Some(before)).then_some(())
        },
    );
    assert_eq!(
        browser.eval("document.querySelector('#reload-error').hidden"),
        true,
        "{}",
        browser.eval("document.querySelector('#reload-error').textContent")
    );
    let status = get(&t.admin_url("/admin/config")).json()["reload"].clone();
    assert_eq!(status["trigger"], "api", "{status}");
    assert!(status["generation"].as_u64() > Some(before), "{status}");

    // The key inspector follows the bucket of the client the traffic comes from.
    browser.eval(
        "(() => { const s = document.querySelector('#inspector-policy'); s.value = 'bucket'; s.dispatchEvent(new Event('change'));
                 document.querySelector('#inspector-key').value = '127.0.0.1';
                 document.querySelector('#inspector-start').click(); return true; })()",
    );
    wait_for(
        "the inspector to draw the bucket",
        Duration::from_secs(10),
        || {
            let kind = browser.eval("document.querySelector('#inspector').dataset.kind");
            let limit = browser.eval("document.querySelector('#inspector-readout').dataset.limit");
            (kind == "bucket" && limit == "10").then_some(())
        },
    );

    // The audit trail shows a key registered through the API, with who registered it.
    let registered = send_json(
        &agent(),
        "POST",
        &t.admin_url("/admin/keys"),
        r#"{"name": "dash-app"}"#,
    );
    assert_eq!(registered.status, 201, "{}", registered.body);
    let id = registered.json()["id"].as_str().unwrap().to_string();
    wait_for(
        "the audit trail to show the registration",
        Duration::from_secs(12),
        || {
            let row = browser.eval(
                "(() => { const r = document.querySelector('#audit-rows tr'); return r ? r.innerText : ''; })()",
            );
            let row = row.as_str().unwrap_or_default().to_string();
            (row.contains("register") && row.contains(&format!("key:{id}"))).then_some(row)
        },
    );

    let png = browser.screenshot_png();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
}

#[test]
fn pages_of_other_sites_cannot_drive_the_admin_api_even_through_dns_rebinding() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&format!(
        "redis:
  url: {}
upstreams:
  a:
    backends: [{}]
routes:
  - prefix: /a
    upstream: a
",
        redis.url(),
        stub.address()
    ));
    let state = || {
        let config = get(&t.admin_url("/admin/config")).json();
        let keys = get(&t.admin_url("/admin/keys")).json();
        (config["reload"]["generation"].clone(), keys["keys"].clone())
    };
    let before = state();
    // `evil.example` resolves to 127.0.0.1 in this browser: what a rebinding attacker's
    // DNS answers once the page is loaded.
    let mut browser = Browser::start_with(
        800,
        600,
        &["--host-resolver-rules=MAP evil.example 127.0.0.1"],
    );

    // A page of another origin (the stub service) fires the attacks a browser lets through
    // without asking: "simple" cross-origin requests, whose answers it cannot read.
    browser.navigate(&format!("http://{}/innocent-page", stub.address()));
    wait_for("the other site's page", Duration::from_secs(10), || {
        (browser.eval("document.readyState") == "complete").then_some(())
    });
    let admin = t.admin_url("");
    let outcome = browser.eval(&format!(
        r#"(async () => {{
            const admin = '{admin}';
            const out = {{}};
            const simple = await fetch(admin + '/admin/keys', {{ method: 'POST', mode: 'no-cors',
                headers: {{ 'Content-Type': 'text/plain' }}, body: JSON.stringify({{ name: 'csrf', tenant: 'x' }}) }});
            out.simple = simple.type;
            out.reload = (await fetch(admin + '/admin/reload', {{ method: 'POST', mode: 'no-cors' }})).type;
            const form = new URLSearchParams({{ name: 'csrf-form' }});
            out.form = (await fetch(admin + '/admin/keys', {{ method: 'POST', mode: 'no-cors', body: form }})).type;
            try {{ await fetch(admin + '/admin/config'); out.read = 'readable'; }} catch (e) {{ out.read = 'blocked'; }}
            try {{
                await fetch(admin + '/admin/keys', {{ method: 'POST', headers: {{ 'Content-Type': 'application/json' }}, body: '{{"name":"csrf-json"}}' }});
                out.json = 'sent';
            }} catch (e) {{ out.json = 'blocked'; }}
            return out;
        }})()"#
    ));
    // The simple requests were sent and answered (opaque to the page), and refused.
    assert_eq!(outcome["simple"], "opaque", "{outcome}");
    assert_eq!(outcome["reload"], "opaque", "{outcome}");
    assert_eq!(outcome["form"], "opaque", "{outcome}");
    assert_eq!(outcome["read"], "blocked", "{outcome}");
    assert_eq!(
        outcome["json"], "blocked",
        "the preflight is refused: {outcome}"
    );
    assert_eq!(state(), before, "the other site changed something");

    // DNS rebinding: the attacker's name now points at the admin listener, so the page is
    // same-origin with it. Its requests still say `Host: evil.example`.
    browser.navigate(&format!("http://evil.example:{}/", t.admin.port()));
    wait_for("the rebound page", Duration::from_secs(10), || {
        (browser.eval("document.readyState") == "complete").then_some(())
    });
    let body = browser.eval("document.body ? document.body.innerText : ''");
    assert!(
        body.as_str().unwrap_or("").contains("misdirected_request"),
        "the dashboard was served to a rebound name: {body}"
    );
    let rebound = browser.eval(
        r#"(async () => ({
            config: (await fetch('/admin/config')).status,
            keys: (await fetch('/admin/keys', { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"name":"rebound"}' })).status,
            metrics: (await fetch('/metrics')).status,
        }))()"#,
    );
    assert_eq!(rebound["config"], 421, "{rebound}");
    assert_eq!(rebound["keys"], 421, "{rebound}");
    assert_eq!(
        rebound["metrics"], 200,
        "metrics stay open to any name: {rebound}"
    );
    assert_eq!(state(), before, "the rebound page changed something");
}

#[test]
fn the_key_inspector_draws_a_calendar_month_between_its_local_boundaries() {
    let redis = Redis::start();
    let stub = Stub::start("a");
    let t = Tollgate::start(&format!(
        "redis:
  url: {}
upstreams:
  a:
    backends: [{}]
limits:
  monthly:
    key: client_ip
    algorithm: sliding_window
    rate: 1000/1mo
    timezone: Asia/Tokyo
    sync: atomic
routes:
  - prefix: /a
    upstream: a
    limits: [monthly]
",
        redis.url(),
        stub.address()
    ));
    let agent = agent();
    for _ in 0..5 {
        assert_eq!(get_with(&agent, &t.url("/a/x"), &[]).status, 200);
    }
    let usage = get(&t.admin_url("/admin/limits/monthly/127.0.0.1")).json();
    let mut browser = Browser::start(1400, 1800);
    browser.navigate(&t.admin_url("/"));
    wait_for("the page to load", Duration::from_secs(10), || {
        (browser.eval("document.readyState") == "complete").then_some(())
    });
    wait_for("the policy list", Duration::from_secs(10), || {
        (browser.eval("!!document.querySelector('#inspector-policy option[value=monthly]')")
            == true)
            .then_some(())
    });
    browser.eval(
        "(() => { const s = document.querySelector('#inspector-policy'); s.value = 'monthly'; s.dispatchEvent(new Event('change'));
                 document.querySelector('#inspector-key').value = '127.0.0.1';
                 document.querySelector('#inspector-start').click(); return true; })()",
    );
    // The month's bounds as Tokyo's wall clock shows them, e.g. "Dec 1, 00:00 – Jan 1, 00:00".
    let bound = |ms: &serde_json::Value| {
        let ms = ms.as_i64().unwrap() + 9 * 3_600_000;
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%b %-d, 00:00")
            .to_string()
    };
    let expected = format!(
        "{} – {} Asia/Tokyo",
        bound(&usage["window_start_ms"]),
        bound(&usage["window_end_ms"])
    );
    let period = wait_for(
        "the inspector to draw the month",
        Duration::from_secs(10),
        || {
            let kind = browser.eval("document.querySelector('#inspector').dataset.kind");
            let period = browser.eval("document.querySelector('#inspector').dataset.period");
            (kind == "window" && period.as_str().is_some_and(|p| !p.is_empty())).then_some(period)
        },
    );
    assert_eq!(period, expected.as_str());
    let limit = browser.eval("document.querySelector('#inspector-limit').textContent");
    assert_eq!(limit, "1000 / 1mo (Asia/Tokyo)");
    let listed = browser
        .eval("document.querySelector('tr[data-policy=monthly] td:nth-child(3)').textContent");
    assert_eq!(listed, "1000 / 1mo Asia/Tokyo");
    let png = browser.screenshot_png();
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-calendar.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());
}

#[test]
fn the_dashboard_edits_runtime_policies_and_overrides() {
    let redis = Redis::start();
    let a = Stub::start("a");
    let t = Tollgate::start(&format!(
        "redis:\n  url: {}\n  sync_interval: 50ms\nupstreams:\n  a:\n    backends: [{}]\nroutes:\n  - prefix: /a\n    upstream: a\n",
        redis.url(),
        a.address()
    ));
    t.wait_redis_up(Duration::from_secs(5));
    let mut browser = Browser::start(1400, 1800);
    browser.navigate(&t.admin_url("/"));
    wait_for("the page to load", Duration::from_secs(10), || {
        (browser.eval("document.readyState") == "complete").then_some(())
    });
    // Fills the editor, presses a button, and waits for the answer it shows.
    let mut act = |setup: &str, button: &str, want_ok: bool| -> String {
        browser.eval(&format!(
            "(() => {{ document.querySelector('#editor-status').hidden = true; {setup}; document.querySelector('{button}').click(); return true; }})()"
        ));
        wait_for(
            &format!("the editor's answer to {button}"),
            Duration::from_secs(10),
            || {
                let shown = browser.eval(
                    "(() => { const s = document.querySelector('#editor-status'); return s.hidden ? '' : s.dataset.ok + ' ' + s.textContent + ' ' + document.querySelector('#editor-errors').innerText; })()",
                );
                let shown = shown.as_str().unwrap_or_default().to_string();
                (!shown.is_empty()).then_some(shown)
            },
        )
        .strip_prefix(if want_ok { "true " } else { "false " })
        .unwrap_or_else(|| panic!("{button}: expected ok={want_ok}"))
        .to_string()
    };
    let set = |id: &str, value: &str| {
        format!(
            "document.querySelector('#{id}').value = {}",
            serde_json::to_string(value).unwrap()
        )
    };
    let statuses = |n: usize| -> Vec<u16> { (0..n).map(|_| get(&t.url("/a/x")).status).collect() };

    let shown = act(
        &format!(
            "{}; {}",
            set("policy-name", "dash_rule"),
            set(
                "policy-body",
                r#"{"key": "client_ip", "algorithm": "fixed_window", "rate": "2/1m", "routes": ["/a"]}"#
            )
        ),
        "#policy-save",
        true,
    );
    assert!(shown.contains("saved dash_rule"), "{shown}");
    assert_eq!(statuses(3), [200, 200, 429], "the dashboard's policy runs");

    // An invalid policy: the field's path is shown and nothing changes.
    let shown = act(
        &set(
            "policy-body",
            r#"{"key": "client_ip", "algorithm": "fixed_window", "rate": "often"}"#,
        ),
        "#policy-save",
        false,
    );
    assert!(shown.contains("422") && shown.contains("rate:"), "{shown}");

    // Changed behind the dashboard's back: its save is refused with 412.
    let behind = send_json(
        &agent(),
        "PUT",
        &t.admin_url("/admin/policies/dash_rule"),
        r#"{"key": "client_ip", "algorithm": "fixed_window", "rate": "3/1m", "routes": ["/a"]}"#,
    );
    assert_eq!(behind.status, 200, "{}", behind.body);
    let shown = act(
        &set(
            "policy-body",
            r#"{"key": "client_ip", "algorithm": "fixed_window", "rate": "9/1m", "routes": ["/a"]}"#,
        ),
        "#policy-save",
        false,
    );
    assert!(shown.contains("412"), "{shown}");

    let shown = act(
        &format!(
            "{}; {}; {}",
            set("override-policy", "dash_rule"),
            set("override-subject", "tenant:acme"),
            set("override-body", r#"{"rate": "50/1m"}"#)
        ),
        "#override-save",
        true,
    );
    assert!(shown.contains("tenant:acme"), "{shown}");
    let listed = get(&t.admin_url("/admin/overrides")).json();
    assert_eq!(listed["overrides"][0]["subject"], "tenant:acme", "{listed}");

    let shown = act("", "#policy-load", true);
    assert!(shown.contains("loaded dash_rule"), "{shown}");
    let shown = act("", "#policy-delete", true);
    assert!(shown.contains("deleted dash_rule"), "{shown}");
    assert_eq!(get(&t.admin_url("/admin/policies/dash_rule")).status, 404);
    assert_eq!(statuses(3), [200; 3], "deleted, so no limit");
}
