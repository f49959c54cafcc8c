//! A blocking HTTP client for tests that reports every status as a value, not an error.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into()
}

fn into_reply(resp: ureq::http::Response<ureq::Body>) -> Reply {
    let status = resp.status().as_u16();
    let mut headers = HashMap::new();
    for (k, v) in resp.headers() {
        headers.insert(
            k.as_str().to_ascii_lowercase(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        );
    }
    let body = resp.into_body().read_to_string().unwrap_or_default();
    Reply {
        status,
        headers,
        body,
    }
}

/// GET with extra headers; panics if no HTTP answer arrives at all.
pub fn get_with(agent: &ureq::Agent, url: &str, headers: &[(&str, &str)]) -> Reply {
    try_get_with(agent, url, headers).unwrap_or_else(|e| panic!("GET {url} failed: {e}"))
}

pub fn try_get_with(
    agent: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, ureq::Error> {
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.call().map(into_reply)
}

pub fn get(url: &str) -> Reply {
    get_with(&agent(), url, &[])
}

pub fn send(agent: &ureq::Agent, method: &str, url: &str, body: &str) -> Reply {
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .body(body.to_string())
        .expect("valid request");
    agent
        .run(req)
        .map(into_reply)
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

/// Sends `body` as `Content-Type: application/json`, which every admin API write needs.
pub fn send_json(agent: &ureq::Agent, method: &str, url: &str, body: &str) -> Reply {
    send_with(
        agent,
        method,
        url,
        &[("content-type", "application/json")],
        body,
    )
}

/// Sends `body` with the given headers; every status is a value.
pub fn send_with(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(body.to_string()).expect("valid request");
    agent
        .run(req)
        .map(into_reply)
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

/// Sends raw bytes and returns one response (or whatever came before the server closed or
/// went quiet). For requests an HTTP library would refuse to send (odd paths, smuggling).
pub fn raw(addr: SocketAddr, request: &[u8]) -> String {
    RawConn::open(addr).exchange(request)
}

/// One client connection driven by hand, for keep-alive and pipelining checks.
pub struct RawConn {
    stream: TcpStream,
}

impl RawConn {
    pub fn open(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("set timeout");
        RawConn { stream }
    }

    /// Writes `request` and reads one response.
    pub fn exchange(&mut self, request: &[u8]) -> String {
        self.stream.write_all(request).expect("write");
        self.read_response()
    }

    pub fn read_response(&mut self) -> String {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        // Byte by byte, so nothing of a following response is consumed.
        loop {
            match self.stream.read(&mut byte) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    out.push(byte[0]);
                    if response_complete(&out) {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Whether the server has closed the connection (a read sees end of stream).
    pub fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.stream.read(&mut byte), Ok(0))
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Whether `data` holds one whole response with a Content-Length body.
pub fn response_complete(data: &[u8]) -> bool {
    let text = String::from_utf8_lossy(data);
    let Some(head_end) = text.find("\r\n\r\n") else {
        return false;
    };
    let head = text[..head_end].to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(n) => data.len() >= head_end + 4 + n,
        None => false,
    }
}

/// The status code of a raw response, or 0 when there is none.
pub fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}
