//! A TCP relay the test controls, put between tollgate and Redis to make Redis slow or
//! silent without touching Redis itself.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Faults {
    delay_ms: AtomicU64,
    /// Hold every byte (in both directions) until cleared: a peer that stopped answering.
    stalled: AtomicBool,
    closed: AtomicBool,
}

pub struct Relay {
    pub addr: SocketAddr,
    faults: Arc<Faults>,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.closed.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    if let (Ok(from), Ok(to)) = (from, to) {
                        let faults = shared.clone();
                        std::thread::spawn(move || pump(from, to, &faults));
                    }
                }
            }
        });
        Relay { addr, faults }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Adds `delay` before forwarding each chunk, both ways.
    pub fn delay(&self, delay: Duration) {
        self.faults
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    pub fn stall(&self, stalled: bool) {
        self.faults.stalled.store(stalled, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.faults.closed.store(true, Ordering::Relaxed);
        self.faults.stalled.store(false, Ordering::Relaxed);
        // Wake the accept loop so it sees `closed`.
        let _ = TcpStream::connect(self.addr);
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, faults: &Faults) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while faults.stalled.load(Ordering::Relaxed) && !faults.closed.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(2));
        }
        let delay = faults.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if to.write_all(&buf[..n]).is_err() || faults.closed.load(Ordering::Relaxed) {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
