//! A bare Pingora proxy with nothing of tollgate's, to measure Pingora's own cost per
//! request on this machine: `cargo run --release --example bare_pingora -- LISTEN BACKEND`.

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

struct Bare(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _s: &mut Session,
        _c: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18500".into());
    let backend: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18201".into())
        .parse()
        .expect("backend ip:port");
    let work_stealing = std::env::var("WORK_STEALING")
        .map(|v| v != "0")
        .unwrap_or(true);
    let conf = ServerConf {
        threads: 1,
        work_stealing,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut service = pingora_proxy::http_proxy_service(&server.configuration, Bare(backend));
    service.add_tcp(&listen);
    server.add_service(service);
    server.run(RunArgs::default());
}
