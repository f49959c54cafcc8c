//! A deadline on reading each request header, so a slowloris client that trickles bytes
//! cannot hold a connection (and its task) open.
//!
//! Pingora times out each *read* (60 s), not the whole header, so a client sending one
//! byte a minute is never cut off. `HeaderDeadline` wraps the proxy application: it arms a
//! timer when a session starts waiting for a request and, if the header has not been read
//! when it fires, answers `408` and shuts the socket down. The proxy reports "header read"
//! through the connection user context Pingora hands to `ProxyHttp::on_connection_reuse`
//! right after parsing a header. The socket is shut down while the session still owns it,
//! so the descriptor cannot belong to another connection by then.

use crate::gateway::SharedGateway;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Set once the proxy has a complete request header for the session it was handed to.
pub struct HeaderRead(Arc<AtomicBool>);

impl HeaderRead {
    /// Called by the proxy with the context Pingora delivered; ignores anything else.
    pub fn mark(context: Box<dyn Any + Send + Sync>) {
        if let Ok(read) = context.downcast::<HeaderRead>() {
            read.0.store(true, Ordering::Release);
        }
    }
}

/// Carried from one request to the next on a kept-alive connection, so the deadline of
/// the next one includes the idle keep-alive period.
pub struct KeptAlive;

pub struct HeaderDeadline<A> {
    inner: Arc<A>,
    gateway: SharedGateway,
}

impl<A> HeaderDeadline<A> {
    pub fn new(inner: A, gateway: SharedGateway) -> Self {
        HeaderDeadline {
            inner: Arc::new(inner),
            gateway,
        }
    }
}

const TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: 34\r\nConnection: close\r\n\r\n{\"error\":\"request_header_timeout\"}";

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> HttpServerApp for HeaderDeadline<A> {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let Some(fd) = session.as_http1().map(|h1| h1.stream().id()) else {
            return self.inner.process_new_http(session, shutdown).await;
        };
        let http = self.gateway.load().config.http.clone();
        let kept_alive = session.take_connection_user_context().is_some();
        // Over TLS the 408 cannot be written to the raw socket (it would be plaintext in a
        // TLS stream); the connection is only closed.
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let deadline = if kept_alive {
            http.keepalive_timeout + http.header_timeout
        } else {
            http.header_timeout
        };
        // `Some(0)` keeps the connection alive with no Pingora timer: Pingora's own
        // (`Some(n)`) wraps every idle read in a timer of its own, and the deadline below
        // already bounds the idle wait (keep-alive plus header timeout), so it only cost
        // every request a timer.
        if crate::tuning::current().keepalive_timer {
            session.set_keepalive(Some(http.keepalive_timeout.as_secs().max(1)));
        } else {
            session.set_keepalive(Some(0));
        }
        let read = Arc::new(AtomicBool::new(false));
        session.set_connection_user_context(Some(Box::new(HeaderRead(read.clone()))));

        let work = self.inner.process_new_http(session, shutdown);
        tokio::pin!(work);
        // Armed for every request on every connection: Pingora's coarse timer shares one
        // timer among all deadlines that fall in the same 10 ms tick, where a tokio sleep
        // takes the runtime's timer wheel lock to register and again to cancel.
        let timer = async {
            if crate::tuning::current().fast_header_timer {
                pingora_timeout::fast_timeout::fast_sleep(deadline).await
            } else {
                tokio::time::sleep(deadline).await
            }
        };
        tokio::select! {
            biased;
            reused = &mut work => return reused,
            _ = timer => {}
        }
        if !read.load(Ordering::Acquire) {
            tracing::debug!(
                fd,
                ?deadline,
                "request header not complete in time; closing"
            );
            cut_off(fd, !kept_alive && !tls);
        }
        work.await
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.inner.server_options()
    }

    /// HTTP/2 settings from the running config, read for each new connection so a reload
    /// applies to the next one.
    fn h2_options(&self) -> Option<pingora_core::protocols::http::v2::server::H2Options> {
        let gateway = self.gateway.load();
        let h2 = &gateway.config.http2;
        let mut options = pingora_core::protocols::http::v2::server::default_h2_options();
        options
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_pending_accept_reset_streams(h2.max_pending_resets)
            .max_local_error_reset_streams(Some(h2.max_error_resets))
            .max_header_list_size(
                u32::try_from(gateway.config.http.max_header_bytes).unwrap_or(u32::MAX),
            );
        Some(options)
    }

    async fn http_cleanup(&self) {
        self.inner.http_cleanup().await
    }

    async fn process_custom_session(
        self: Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner
            .clone()
            .process_custom_session(stream, shutdown)
            .await
    }
}

/// Answers 408 (best effort: the client may have sent nothing at all on an idle kept-alive
/// connection, where a bare close is the polite answer) and shuts the socket down so the
/// pending read ends at once.
fn cut_off(fd: i32, answer: bool) {
    // SAFETY: `fd` is the socket of a session that is still running (its future has not
    // completed), so it is open and ours; neither call takes ownership of it.
    unsafe {
        if answer {
            libc::send(
                fd,
                TIMEOUT_RESPONSE.as_ptr().cast(),
                TIMEOUT_RESPONSE.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeout_response_length_matches_its_body() {
        let text = std::str::from_utf8(TIMEOUT_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }
}
