//! The admin listener: Prometheus metrics and the admin's own health.

use crate::gateway::SharedGateway;
use crate::metrics::Metrics;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;
use std::sync::Arc;

pub struct Admin {
    gateway: SharedGateway,
    metrics: Arc<Metrics>,
}

impl Admin {
    pub fn new(gateway: SharedGateway, metrics: Arc<Metrics>) -> Self {
        Admin { gateway, metrics }
    }

    fn metrics_text(&self) -> Vec<u8> {
        self.gateway.load().publish_backend_health(&self.metrics);
        self.metrics.render()
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", value.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        match (method, path.as_str()) {
            (http::Method::GET, "/metrics") => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics_text(),
            ),
            (http::Method::GET, "/health") => {
                json(StatusCode::OK, serde_json::json!({"status": "ok"}))
            }
            (_, "/metrics" | "/health") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "method_not_allowed"}),
            ),
            _ => json(
                StatusCode::NOT_FOUND,
                serde_json::json!({"error": "not_found", "path": path}),
            ),
        }
    }
}
