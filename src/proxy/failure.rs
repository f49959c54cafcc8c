//! Turning Pingora errors into what the client sees and what the metrics count.

use super::ctx::LocalAnswer;
use pingora_error::{Error, ErrorSource, ErrorType};

/// The error `upstream_peer` raises when every backend has been tried.
pub const NO_BACKEND: ErrorType = ErrorType::new("NoBackendAvailable");

/// The `kind` label of `tollgate_upstream_errors_total` for a failed attempt.
pub fn upstream_error_kind(e: &Error) -> &'static str {
    match e.etype() {
        ErrorType::ConnectRefused => "connect_refused",
        ErrorType::ConnectTimedout => "connect_timeout",
        ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::BindError
        | ErrorType::SocketError
        | ErrorType::ConnectProxyFailure
        | ErrorType::TLSHandshakeFailure
        | ErrorType::TLSHandshakeTimedout
        | ErrorType::HandshakeError
        | ErrorType::InvalidCert => "connect_error",
        ErrorType::ReadTimedout => "read_timeout",
        ErrorType::WriteTimedout => "write_timeout",
        ErrorType::ConnectionClosed => "connection_closed",
        ErrorType::ReadError => "read_error",
        ErrorType::WriteError => "write_error",
        t if *t == NO_BACKEND => "no_backend",
        _ => "protocol_error",
    }
}

pub fn is_connect_error(e: &Error) -> bool {
    matches!(
        upstream_error_kind(e),
        "connect_refused" | "connect_timeout" | "connect_error"
    )
}

/// What to answer for a request that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A JSON error naming the upstream.
    Upstream(u16, LocalAnswer),
    /// A plain status (the client's fault, or an HTTPStatus error raised by a filter).
    Status(u16),
    /// The client is gone; nothing can be written.
    Silent,
}

pub fn classify(e: &Error) -> Verdict {
    if let ErrorType::HTTPStatus(code) = e.etype() {
        return Verdict::Status(*code);
    }
    if *e.etype() == NO_BACKEND {
        return Verdict::Upstream(502, LocalAnswer::UpstreamUnavailable);
    }
    match e.esource() {
        ErrorSource::Upstream => match e.etype() {
            ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                Verdict::Upstream(504, LocalAnswer::UpstreamTimeout)
            }
            _ if is_connect_error(e) => Verdict::Upstream(502, LocalAnswer::UpstreamUnavailable),
            _ => Verdict::Upstream(502, LocalAnswer::BadGateway),
        },
        ErrorSource::Downstream => match e.etype() {
            ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => {
                Verdict::Silent
            }
            ErrorType::ReadTimedout => Verdict::Status(408),
            _ => Verdict::Status(400),
        },
        ErrorSource::Internal | ErrorSource::Unset => Verdict::Status(500),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_map_to_502_and_504() {
        let refused = Error::explain(ErrorType::ConnectRefused, "x").into_up();
        assert_eq!(
            classify(&refused),
            Verdict::Upstream(502, LocalAnswer::UpstreamUnavailable)
        );
        let slow = Error::explain(ErrorType::ReadTimedout, "x").into_up();
        assert_eq!(
            classify(&slow),
            Verdict::Upstream(504, LocalAnswer::UpstreamTimeout)
        );
        let none = Error::explain(NO_BACKEND, "x");
        assert_eq!(
            classify(&none),
            Verdict::Upstream(502, LocalAnswer::UpstreamUnavailable)
        );
        assert_eq!(upstream_error_kind(&none), "no_backend");
    }

    #[test]
    fn client_failures_are_silent_or_4xx() {
        let gone = Error::explain(ErrorType::ConnectionClosed, "x").into_down();
        assert_eq!(classify(&gone), Verdict::Silent);
        let bad = Error::explain(ErrorType::InvalidHTTPHeader, "x").into_down();
        assert_eq!(classify(&bad), Verdict::Status(400));
    }
}
