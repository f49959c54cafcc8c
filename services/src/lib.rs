//! A stub HTTP backend: answers any method and path with a small JSON document naming the
//! service, so tests and benchmarks can tell which upstream served a request.
//!
//! Knobs for tests and benchmarks:
//! - a fixed `delay` before every answer, and a `fail_rate` of 500 answers;
//! - per request, the header `x-stub-delay-ms: N` delays that answer by N ms, and
//!   `x-stub-echo: headers` adds the request's headers to the body;
//! - per request, `x-stub-usage: N` adds an LLM API's token usage to the body
//!   (`"usage":{"total_tokens":N}`), and `x-stub-sse: K` answers `text/event-stream` instead:
//!   K `data:` events, each sent as a chunk of its own, the last one carrying that usage;
//! - `GET /health` answers 200 without delay or failures; `GET /_stub/stats` reports how many
//!   requests (other than these two) and connections this process has accepted.

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpListener;

#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    pub listen: SocketAddr,
    pub delay: Duration,
    /// Share of requests (0.0–1.0) answered with 500.
    pub fail_rate: f64,
    pub threads: usize,
}

struct State {
    name: String,
    delay: Duration,
    fail_rate: f64,
    answered: AtomicU64,
    connections: AtomicU64,
}

#[derive(Serialize)]
struct Reply<'a> {
    service: &'a str,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    query: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body_bytes: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    headers: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Usage>,
}

/// Token usage as LLM APIs report it (`{"usage":{"total_tokens":N}}`).
#[derive(Serialize)]
struct Usage {
    total_tokens: u64,
}

/// The most events one `x-stub-sse` answer sends.
pub const MAX_SSE_EVENTS: usize = 1000;

/// A response body sent as separate chunks (chunked encoding, no `Content-Length`), as a
/// streaming API sends its events.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

type StubBody = Either<Full<Bytes>, Chunks>;

/// `events` SSE events: deltas, then one carrying `usage` (a delta too when there is none).
fn sse_events(events: usize, usage: Option<u64>) -> Chunks {
    let mut chunks: VecDeque<Bytes> = (1..events)
        .map(|i| {
            Bytes::from(format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i}\"}}}}]}}\n\n"
            ))
        })
        .collect();
    chunks.push_back(Bytes::from(match usage {
        Some(n) => format!("data: {{\"choices\":[],\"usage\":{{\"total_tokens\":{n}}}}}\n\n"),
        None => format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {events}\"}}}}]}}\n\n"
        ),
    }));
    Chunks(chunks)
}

fn header_number(headers: &hyper::HeaderMap, name: &str) -> Option<u64> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<StubBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<StubBody>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read the whole body so the connection stays usable, and report its size.
    let body_bytes = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let path = parts.uri.path();

    if path == "/health" {
        let body = format!(r#"{{"status":"ok","service":{}}}"#, quoted(&state.name));
        return Ok(json(StatusCode::OK, body.into_bytes()));
    }
    if path == "/_stub/stats" {
        let body = format!(
            r#"{{"service":{},"answered":{},"connections":{}}}"#,
            quoted(&state.name),
            state.answered.load(Ordering::Relaxed),
            state.connections.load(Ordering::Relaxed)
        );
        return Ok(json(StatusCode::OK, body.into_bytes()));
    }

    state.answered.fetch_add(1, Ordering::Relaxed);
    let extra_delay = header_number(&parts.headers, "x-stub-delay-ms")
        .map(Duration::from_millis)
        .unwrap_or_default();
    let delay = state.delay + extra_delay;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let failed = state.fail_rate > 0.0 && rand::random::<f64>() < state.fail_rate;
    let usage = header_number(&parts.headers, "x-stub-usage");
    let sse = header_number(&parts.headers, "x-stub-sse");
    if let (false, Some(events)) = (failed, sse) {
        let events = usize::try_from(events)
            .unwrap_or(MAX_SSE_EVENTS)
            .clamp(1, MAX_SSE_EVENTS);
        let mut resp = Response::new(Either::Right(sse_events(events, usage)));
        resp.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("text/event-stream"),
        );
        resp.headers_mut().insert(
            hyper::header::CACHE_CONTROL,
            hyper::header::HeaderValue::from_static("no-cache"),
        );
        return Ok(resp);
    }
    let echo_headers = parts
        .headers
        .get("x-stub-echo")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"headers"));
    let reply = Reply {
        service: &state.name,
        method: parts.method.as_str(),
        path,
        query: parts.uri.query(),
        body_bytes: (body_bytes > 0).then_some(body_bytes),
        headers: echo_headers.then(|| {
            parts
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect()
        }),
        error: failed.then_some("injected failure"),
        usage: usage.map(|total_tokens| Usage { total_tokens }),
    };
    // `x-stub-status: 401` answers with that status, for tests of what counts by response.
    let asked = parts
        .headers
        .get("x-stub-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|v| StatusCode::from_u16(v).ok());
    let status = match (failed, asked) {
        (true, _) => StatusCode::INTERNAL_SERVER_ERROR,
        (false, Some(asked)) => asked,
        (false, None) => StatusCode::OK,
    };
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    Ok(json(status, body))
}

fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Serves on an already-bound listener until the task is dropped.
pub async fn serve(listener: TcpListener, options: &Options) {
    let state = Arc::new(State {
        name: options.name.clone(),
        delay: options.delay,
        fail_rate: options.fail_rate,
        answered: AtomicU64::new(0),
        connections: AtomicU64::new(0),
    });
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("stub-service {}: accept failed: {e}", state.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(req, state.clone()));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Runs a stub on threads of its own, returning once it is listening, with the address it
/// bound: with port 0 the system picks a free one, which is the only race-free way for a
/// caller to get a port nobody else holds.
pub fn spawn(options: Options) -> std::io::Result<(std::thread::JoinHandle<()>, SocketAddr)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.threads.max(1))
        .thread_name(format!("stub-{}", options.name))
        .enable_all()
        .build()?;
    let listener = runtime.block_on(TcpListener::bind(options.listen))?;
    let bound = listener.local_addr()?;
    let handle = std::thread::Builder::new()
        .name(format!("stub-{}", options.name))
        .spawn(move || runtime.block_on(serve(listener, &options)))?;
    Ok((handle, bound))
}
