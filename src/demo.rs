//! `tollgate demo`: the whole system from a fresh clone in one command. It starts a stub
//! service for every loopback backend in the config that nobody listens on yet, prints the
//! URLs to try, and runs the proxy.

use crate::config::split_host_port;
use crate::config::Config;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Starts the missing stub backends; returns a line per stub for the banner.
pub fn start_stubs(config: &Config) -> Result<Vec<String>, String> {
    let mut started = Vec::new();
    for (name, upstream) in &config.upstreams {
        for backend in &upstream.backends {
            let Some(addr) = loopback_addr(&backend.address) else {
                continue;
            };
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                started.push(format!("  {name}: using what already listens on {addr}"));
                continue;
            }
            let service = name.strip_prefix("service_").unwrap_or(name).to_string();
            stub_service::spawn(stub_service::Options {
                name: service.clone(),
                listen: addr,
                delay: Duration::ZERO,
                fail_rate: 0.0,
                threads: 1,
            })
            .map_err(|e| format!("cannot start stub service {service} on {addr}: {e}"))?;
            started.push(format!("  stub service {service:<8} http://{addr}"));
        }
    }
    Ok(started)
}

fn loopback_addr(address: &str) -> Option<SocketAddr> {
    let (host, port) = split_host_port(address).ok()?;
    (host, port)
        .to_socket_addrs()
        .ok()?
        .find(|a| a.ip().is_loopback())
}

/// What to print once the demo is up.
pub fn banner(config: &Config, stubs: &[String]) -> String {
    // The demo's URLs use the first plaintext listener (curl needs no certificate there).
    let proxy = config
        .listen
        .iter()
        .find(|l| l.tls.is_none())
        .or(config.listen.first())
        .map(|l| l.address.as_str())
        .unwrap_or("0.0.0.0:8000");
    let proxy = proxy.replace("0.0.0.0", "127.0.0.1");
    let admin = config.admin.listen.replace("0.0.0.0", "127.0.0.1");
    let mut out = String::from("tollgate demo is up\n");
    for line in stubs {
        out.push_str(line);
        out.push('\n');
    }
    out.push_str(&format!(
        "  proxy                http://{proxy}\n  admin                http://{admin}\n\nTry:\n"
    ));
    for route in &config.routes {
        let path = if route.prefix == "/" {
            "/hello".to_string()
        } else {
            format!("{}/hello", route.prefix.trim_end_matches('/'))
        };
        match &route.host {
            // A wildcard host is tried with a name under it.
            Some(host) => out.push_str(&format!(
                "  curl -i -H 'Host: {}' http://{proxy}{path}\n",
                host.replace('*', "www")
            )),
            None => out.push_str(&format!("  curl -i http://{proxy}{path}\n")),
        }
    }
    out.push_str(&format!(
        "  curl -i http://{proxy}/health\n  curl http://{admin}/metrics\n"
    ));
    out
}
