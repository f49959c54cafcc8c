//! A bounded request loop that runs while a test injects a fault, recording every outcome.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Outcome {
    /// When the request was sent, from the start of the load.
    pub sent: Duration,
    pub latency: Duration,
    /// The status, or 0 when no response came (the error is in `error`).
    pub status: u16,
    pub error: Option<String>,
    pub retry_after: Option<String>,
    pub url: usize,
}

pub struct Load {
    pub started: Instant,
    /// The wall clock (since the Unix epoch) at `started`, to place outcomes in windows.
    pub started_unix: Duration,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    /// `workers` threads, each cycling through `urls` with `headers` until stopped (or
    /// `limit` passes, so a failing test cannot hang on it).
    pub fn start(workers: usize, urls: &[String], headers: &[(&str, &str)]) -> Load {
        let started = Instant::now();
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970");
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let workers = (0..workers)
            .map(|w| {
                let (stop, outcomes, urls, headers) = (
                    stop.clone(),
                    outcomes.clone(),
                    urls.to_vec(),
                    headers.clone(),
                );
                std::thread::spawn(move || {
                    let agent = super::agent();
                    let headers: Vec<(&str, &str)> = headers
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    let mut i = w;
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Duration::from_secs(120)
                    {
                        let url = i % urls.len();
                        i += 1;
                        let sent = started.elapsed();
                        let t0 = Instant::now();
                        let result = super::try_get_with(&agent, &urls[url], &headers);
                        let outcome = match result {
                            Ok(r) => Outcome {
                                sent,
                                latency: t0.elapsed(),
                                status: r.status,
                                error: None,
                                retry_after: r.header("retry-after").map(str::to_string),
                                url,
                            },
                            Err(e) => Outcome {
                                sent,
                                latency: t0.elapsed(),
                                status: 0,
                                error: Some(e.to_string()),
                                retry_after: None,
                                url,
                            },
                        };
                        outcomes.lock().unwrap().push(outcome);
                    }
                })
            })
            .collect();
        Load {
            started,
            started_unix,
            stop,
            outcomes,
            workers,
        }
    }

    /// Time since the load started: a marker to compare outcomes' `sent` with.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn count(&self) -> usize {
        self.outcomes.lock().unwrap().len()
    }

    /// A copy of the outcomes so far, while the load goes on.
    pub fn snapshot(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Waits until `n` more requests have completed.
    pub fn wait_for_more(&self, n: usize) {
        let target = self.count() + n;
        super::wait_for(
            &format!("{n} more requests"),
            Duration::from_secs(30),
            || (self.count() >= target).then_some(()),
        );
    }

    /// Waits until `n` requests sent later than `marker` (a `now()` reading) have
    /// completed: what a test needs when it reasons about what happened after a moment,
    /// however fast or slow the machine runs the load.
    pub fn wait_for_sent_after(&self, marker: Duration, n: usize) {
        super::wait_for(
            &format!("{n} requests sent after {marker:?}"),
            Duration::from_secs(30),
            || {
                let outcomes = self.outcomes.lock().unwrap();
                (outcomes.iter().filter(|o| o.sent > marker).count() >= n).then_some(())
            },
        );
    }

    pub fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        std::mem::take(&mut *self.outcomes.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The `q`-quantile of some latencies.
pub fn quantile(latencies: &mut [Duration], q: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort();
    let at = ((latencies.len() - 1) as f64 * q).round() as usize;
    latencies[at]
}
