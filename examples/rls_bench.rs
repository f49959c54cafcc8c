//! A load generator for Envoy's rate limit service (h2load cannot speak gRPC): keeps many
//! `ShouldRateLimit` calls in flight over a few HTTP/2 connections for a while, then prints
//! one JSON line with the calls per second and the answers.
//!
//! ```text
//! rls_bench --addr 127.0.0.1:8081 --domain bench --key user --keys 100000 \
//!           --seconds 10 --concurrency 64 --connections 4
//! ```
//!
//! `--keys 1` sends one hot descriptor; more spreads the calls over that many values.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor::Entry, RateLimitDescriptor,
};
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use envoy_types::pb::envoy::service::ratelimit::v3::RateLimitRequest;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    addr: String,
    domain: String,
    key: String,
    keys: u64,
    seconds: u64,
    concurrency: usize,
    connections: usize,
    threads: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        addr: "127.0.0.1:8081".into(),
        domain: "bench".into(),
        key: "user".into(),
        keys: 1,
        seconds: 5,
        concurrency: 64,
        connections: 4,
        threads: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: `{value}` is not a number"))
        };
        match flag.as_str() {
            "--addr" => a.addr = value.clone(),
            "--domain" => a.domain = value.clone(),
            "--key" => a.key = value.clone(),
            "--keys" => a.keys = number()?.max(1),
            "--seconds" => a.seconds = number()?.max(1),
            "--concurrency" => a.concurrency = number()?.max(1) as usize,
            "--connections" => a.connections = number()?.max(1) as usize,
            "--threads" => a.threads = number()?.max(1) as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(a)
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rls_bench: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let mut clients = Vec::with_capacity(args.connections);
    for _ in 0..args.connections {
        match RateLimitServiceClient::connect(format!("http://{}", args.addr)).await {
            Ok(c) => clients.push(c),
            Err(e) => {
                eprintln!("rls_bench: cannot connect to {}: {e}", args.addr);
                std::process::exit(1);
            }
        }
    }
    let (ok, over, errors) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs(args.seconds);
    let mut tasks = Vec::with_capacity(args.concurrency);
    for i in 0..args.concurrency {
        let mut client = clients[i % clients.len()].clone();
        let (ok, over, errors, next) = (ok.clone(), over.clone(), errors.clone(), next.clone());
        let (domain, key, keys) = (args.domain.clone(), args.key.clone(), args.keys);
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let n = next.fetch_add(1, Ordering::Relaxed) % keys;
                let request = RateLimitRequest {
                    domain: domain.clone(),
                    descriptors: vec![RateLimitDescriptor {
                        entries: vec![Entry {
                            key: key.clone(),
                            value: if keys == 1 {
                                "hot".into()
                            } else {
                                n.to_string()
                            },
                        }],
                        ..Default::default()
                    }],
                    hits_addend: 0,
                };
                match client.should_rate_limit(request).await {
                    Ok(r) if r.get_ref().overall_code == 1 => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => over.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let (ok, over, errors) = (
        ok.load(Ordering::Relaxed),
        over.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
    );
    let calls = ok + over + errors;
    println!(
        "{{\"calls\":{calls},\"ok\":{ok},\"over_limit\":{over},\"errors\":{errors},\"seconds\":{seconds:.3},\"calls_per_second\":{:.1}}}",
        calls as f64 / seconds
    );
}
