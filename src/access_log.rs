//! The access log: one JSON line per request, written by a thread of its own so that a slow
//! disk never slows a request. When the writer falls behind, lines are dropped and counted
//! in `tollgate_access_log_dropped_total` rather than queued without bound.

use prometheus::IntCounter;
use serde::Serialize;
use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// One request, as written to the log.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    pub ts: String,
    pub request_id: &'a str,
    pub client: String,
    pub method: &'a str,
    pub uri: String,
    pub status: u16,
    pub route: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    pub duration_ms: f64,
    pub bytes_sent: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The rate limit policy that refused the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limited_by: Option<&'a str>,
}

enum Message {
    Line(String),
    Flush(SyncSender<()>),
}

pub struct AccessLog {
    tx: SyncSender<Message>,
    dropped: IntCounter,
}

/// Lines buffered between the request path and the writer thread.
const QUEUE: usize = 65_536;
/// The writer flushes at least this often, so `tail -f` shows lines promptly.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

impl AccessLog {
    /// Opens `target`: `stdout`, `stderr` or a file path (appended to).
    pub fn open(target: &str, dropped: IntCounter) -> io::Result<Self> {
        let sink: Box<dyn Write + Send> = match target {
            "stdout" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            path => Box::new(OpenOptions::new().create(true).append(true).open(path)?),
        };
        let (tx, rx) = mpsc::sync_channel::<Message>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut out = BufWriter::with_capacity(64 * 1024, sink);
                loop {
                    match rx.recv_timeout(FLUSH_EVERY) {
                        Ok(Message::Line(line)) => {
                            let _ = out.write_all(line.as_bytes());
                        }
                        Ok(Message::Flush(done)) => {
                            let _ = out.flush();
                            let _ = done.send(());
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            let _ = out.flush();
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            let _ = out.flush();
                            return;
                        }
                    }
                }
            })?;
        Ok(AccessLog { tx, dropped })
    }

    pub fn record(&self, entry: &Entry<'_>) {
        let Ok(mut line) = serde_json::to_string(entry) else {
            return;
        };
        line.push('\n');
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Message::Line(line)) {
            self.dropped.inc();
        }
    }

    /// Writes out everything queued so far; used before the process exits.
    pub fn flush(&self) {
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        if self.tx.send(Message::Flush(done_tx)).is_ok() {
            let _ = done_rx.recv_timeout(Duration::from_secs(2));
        }
    }
}

/// Formats the current time as RFC 3339 with milliseconds, in UTC.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
