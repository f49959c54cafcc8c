//! `GET /admin/stats`: one snapshot of everything the dashboard shows.

use super::{Admin, Reply};
use crate::config::{Algorithm, Scope, SyncMode};
use serde_json::{json, Value};

pub fn snapshot(admin: &Admin) -> Reply {
    let gateway = admin.gateway.load_full();
    let now_ms = crate::limit::link::unix_ms();
    let now_s = now_ms / 1000;
    // The series are fed only while someone looks at them.
    admin.decisions.dashboard_watched(now_ms);
    let routes: serde_json::Map<String, Value> = admin
        .decisions
        .route_series(now_s)
        .into_iter()
        .filter(|(route, _)| gateway.labels.contains(route))
        .map(|(route, [allowed, limited, errors])| {
            (
                route,
                json!({"allowed": allowed, "limited": limited, "errors": errors}),
            )
        })
        .collect();
    let seconds: Vec<u64> = (now_s + 1 - 60..=now_s).collect();

    let decisions = &admin.metrics.ratelimit_decisions;
    let file = admin.reloader.file_config();
    let from_file = &file.limits;
    let policies: Vec<Value> = gateway
        .policies
        .values()
        .map(|p| {
            let count = |result: &str| decisions.with_label_values(&[&p.name, result]).get();
            json!({
                "name": &*p.name,
                "source": if from_file.contains_key(&*p.name) { "file" } else { "api" },
                "algorithm": p.algorithm.name(),
                "scope": match p.scope { Scope::Global => "global", Scope::Local => "local" },
                "sync": match p.sync { SyncMode::Async => "async", SyncMode::Atomic => "atomic" },
                "limit": p.base.params.quota(),
                "window_seconds": if p.algorithm == Algorithm::Concurrency { None } else { p.base.params.window_seconds() },
                // Calendar quotas by name: a month has no fixed number of seconds.
                "period": p.config.rate.and_then(|r| r.calendar).filter(|_| p.algorithm.is_window()).map(|u| u.spelling()),
                "timezone": p.config.timezone.map(|tz| tz.name()),
                "active_keys": p.counters.active_keys.get(),
                "tiers": p.tiers.keys().collect::<Vec<_>>(),
                "overrides": p.config.overrides.keys().collect::<Vec<_>>(),
                "decisions": {
                    "allowed": count("allowed"),
                    "limited": count("limited"),
                    "shadow_limited": count("shadow_limited"),
                    "failed_open": count("failed_open"),
                    "unavailable": count("unavailable"),
                },
            })
        })
        .collect();

    let redis = match &gateway.redis {
        None => json!({"configured": false, "up": false}),
        Some(link) => {
            let sync = link.sync_summary();
            let errors: u64 = ["connect", "heartbeat", "sync", "atomic", "decision_log"]
                .iter()
                .map(|op| admin.metrics.redis_errors.with_label_values(&[op]).get())
                .sum();
            json!({
                "configured": true,
                "up": link.is_up(),
                "url": link.config.describe(),
                "unreachable_slots": link.store().unreachable_slots(),
                "nodes": link.nodes(),
                "node_id": link.node_id(),
                "sync_ms": sync.map(|(last, p50, p99)| json!({"last": last, "p50": p50, "p99": p99})),
                "errors": errors,
            })
        }
    };

    let upstreams: Vec<Value> = gateway
        .upstreams
        .values()
        .map(|pool| {
            let backends: Vec<Value> = pool
                .members()
                .iter()
                .map(|m| json!({"address": m.label, "up": pool.is_up(&m.backend)}))
                .collect();
            json!({"name": pool.name, "backends": backends})
        })
        .collect();

    let reload = admin.reloader.status();
    Reply::Json(
        200,
        json!({
            "time": crate::access_log::now_rfc3339(),
            "node": gateway.redis.as_ref().map(|l| l.node_id().to_string()).unwrap_or_else(hostname),
            "uptime_seconds": admin.started.elapsed().as_secs_f64(),
            "in_flight": admin.metrics.requests_in_flight.get(),
            "series": {"seconds": seconds, "routes": routes},
            "top_limited": admin.decisions.top_limited(now_s, 10),
            "policies": policies,
            "redis": redis,
            "upstreams": upstreams,
            "reload": {
                "time": reload.time,
                "result": reload.result,
                "generation": reload.generation,
                "error": reload.error,
            },
        }),
    )
}

fn hostname() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "tollgate".into())
}
