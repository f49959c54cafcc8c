//! The dashboard in a real browser: headless Chromium loads it while traffic flows, and
//! the live figures, charts, feed and key inspector must show that traffic. A screenshot
//! is saved for a person to look at.

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
routes:
  - prefix: /a
    upstream: service_a
    limits: [per_client]
  - prefix: /b
    upstream: service_b
    limits: [bucket]
",
        redis.url(),
        a.address(),
        b.address()
    ));
    // Traffic on both routes, enough to be both admitted and limited.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, urls) = (stop.clone(), [t.url("/a/x"), t.url("/b/y")]);
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
        2
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

    let png = browser.screenshot_png();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    std::fs::write(&path, png).unwrap();
    eprintln!("dashboard screenshot: {}", path.display());
    stop.store(true, Ordering::Relaxed);
    traffic.join().unwrap();
}
