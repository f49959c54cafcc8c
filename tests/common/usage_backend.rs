//! A backend that reports what each response cost, the way LLM APIs do, and counts the
//! requests it has in flight. Paths (anything before them is ignored):
//!
//! - `/json/N`: `application/json` with `usage.total_tokens` = N;
//! - `/header/N`: the header `x-usage-tokens: N`;
//! - `/sse/N`: a `text/event-stream` whose first event goes out at once, and whose last
//!   `data:` event carries `usage.total_tokens` = N once the test calls [`release`]
//!   (`UsageBackend::release`) — or at once when the backend was started unheld;
//! - `/raw/VALUE`: JSON whose `usage.total_tokens` is VALUE written as is (`missing` leaves
//!   the field out, `text` is the string `"lots"`);
//! - `/slow/MS`: waits MS milliseconds, then answers.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Shared {
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    served: AtomicU64,
    /// SSE streams whose last event went out.
    finished: AtomicU64,
    held: Mutex<bool>,
    released: Condvar,
    stop: AtomicBool,
}

pub struct UsageBackend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl UsageBackend {
    /// Streams finish at once.
    pub fn start() -> UsageBackend {
        UsageBackend::start_held(false)
    }

    /// `held`: SSE streams send their first event, then wait for [`UsageBackend::release`].
    pub fn start_held(held: bool) -> UsageBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the usage backend");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            held: Mutex::new(held),
            ..Shared::default()
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let s = s.clone();
                std::thread::spawn(move || serve(stream, &s));
            }
        });
        UsageBackend { addr, shared }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Lets held SSE streams send their last events.
    pub fn release(&self) {
        let mut held = self.shared.held.lock().expect("lock");
        *held = false;
        self.shared.released.notify_all();
    }

    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests it had in flight at once (since the last reset).
    pub fn max_in_flight(&self) -> u64 {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Starts counting `max_in_flight` again from what is in flight now.
    pub fn reset_max_in_flight(&self) {
        self.shared
            .max_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }

    pub fn served(&self) -> u64 {
        self.shared.served.load(Ordering::SeqCst)
    }

    pub fn finished_streams(&self) -> u64 {
        self.shared.finished.load(Ordering::SeqCst)
    }
}

impl Drop for UsageBackend {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.release();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Headers, up to the blank line (GET requests: no body).
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" || line == "\n" => break,
                Ok(_) => {}
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let mut counted = InFlight::enter(shared);
        let ok = answer(&mut out, &path, shared, &mut counted).is_ok();
        counted.leave();
        shared.served.fetch_add(1, Ordering::SeqCst);
        if !ok {
            return;
        }
    }
}

/// One request counted in flight, from its arrival until it is left (at most once).
struct InFlight<'a> {
    shared: &'a Shared,
    counted: bool,
}

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight {
            shared,
            counted: true,
        }
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.counted) {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn answer(
    out: &mut TcpStream,
    path: &str,
    shared: &Shared,
    counted: &mut InFlight<'_>,
) -> std::io::Result<()> {
    let mut parts = path.rsplitn(3, '/');
    let arg = parts.next().unwrap_or("");
    let kind = parts.next().unwrap_or("");
    let fixed = |out: &mut TcpStream, headers: &str, body: &str| {
        write!(
            out,
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n{headers}\r\n{body}",
            body.len()
        )
    };
    match kind {
        "json" => fixed(
            out,
            "content-type: application/json\r\n",
            &format!(
                r#"{{"id":"c1","choices":[{{"text":"hi"}}],"usage":{{"prompt_tokens":1,"total_tokens":{arg}}}}}"#
            ),
        ),
        "header" => fixed(out, &format!("x-usage-tokens: {arg}\r\n"), "ok"),
        "raw" => {
            let body = if arg == "missing" {
                r#"{"usage":{}}"#.to_string()
            } else if arg == "text" {
                r#"{"usage":{"total_tokens":"lots"}}"#.to_string()
            } else {
                format!(r#"{{"usage":{{"total_tokens":{arg}}}}}"#)
            };
            fixed(out, "content-type: application/json\r\n", &body)
        }
        "slow" => {
            std::thread::sleep(Duration::from_millis(arg.parse().unwrap_or(100)));
            // Done before the answer goes out: the proxy frees the request's slot once it
            // has the answer, and a count left after the write would still hold it while
            // this thread waits for a core, so the next admitted request would seem one
            // too many.
            counted.leave();
            fixed(out, "", "ok")
        }
        "sse" => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
            )?;
            chunk(
                out,
                "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}],\"usage\":null}\n\n",
            )?;
            {
                let mut held = shared.held.lock().expect("lock");
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while *held && std::time::Instant::now() < deadline {
                    held = shared
                        .released
                        .wait_timeout(held, Duration::from_millis(100))
                        .expect("lock")
                        .0;
                }
            }
            chunk(
                out,
                "data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}],\"usage\":null}\n\n",
            )?;
            chunk(
                out,
                &format!("data: {{\"choices\":[],\"usage\":{{\"total_tokens\":{arg}}}}}\n\n"),
            )?;
            chunk(out, "data: [DONE]\n\n")?;
            write!(out, "0\r\n\r\n")?;
            out.flush()?;
            shared.finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        _ => fixed(out, "", "ok"),
    }
}

fn chunk(out: &mut TcpStream, data: &str) -> std::io::Result<()> {
    write!(out, "{:x}\r\n{data}\r\n", data.len())?;
    out.flush()
}
