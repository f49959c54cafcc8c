//! Responses the proxy writes itself: health, 4xx for bad or unroutable requests, 5xx when
//! upstreams fail. All are JSON with an `error` code clients can switch on, and all carry
//! the request id. Unlike Pingora's defaults they keep the client connection alive where
//! the protocol allows, so a refused client does not pay for a new handshake.

use super::headers::X_REQUEST_ID;
use super::RequestCtx;
use bytes::Bytes;
use http::HeaderValue;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use serde_json::{json, Value};

/// Writes a JSON answer with the request's id (and its listener's HSTS header).
pub async fn json(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    body: &Value,
    extra_headers: &[(&'static str, HeaderValue)],
) -> Result<()> {
    let body = Bytes::from(body.to_string());
    let mut header = ResponseHeader::build(status, Some(5 + extra_headers.len()))?;
    header.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    header.insert_header(X_REQUEST_ID, &ctx.request_id)?;
    header.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    if let Some(hsts) = &ctx.hsts {
        header.insert_header(http::header::STRICT_TRANSPORT_SECURITY, hsts)?;
    }
    for (name, value) in extra_headers {
        header.insert_header(*name, value.clone())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head_only)
        .await?;
    if !head_only {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

pub fn health_body() -> Value {
    json!({"status": "ok", "service": "tollgate", "version": env!("CARGO_PKG_VERSION")})
}

pub fn no_route_body(path: &str) -> Value {
    json!({"error": "no_route", "path": path})
}

pub fn method_not_allowed_body(method: &str) -> Value {
    json!({"error": "method_not_allowed", "method": method})
}

pub fn bad_path_body(detail: &str) -> Value {
    json!({"error": "bad_path", "detail": detail})
}

pub fn upstream_body(error: &str, upstream: &str) -> Value {
    json!({"error": error, "upstream": upstream})
}
