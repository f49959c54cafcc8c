//! A WebSocket echo backend (tungstenite, a thread per connection) for WebSocket tests.

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct EchoServer {
    pub addr: SocketAddr,
    /// WebSocket sessions open right now.
    pub open: Arc<AtomicUsize>,
    /// Upgrades accepted so far.
    pub accepted: Arc<AtomicUsize>,
}

impl EchoServer {
    pub fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo server");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (o, a) = (open.clone(), accepted.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (open, accepted) = (o.clone(), a.clone());
                std::thread::spawn(move || {
                    // Counted before the 101 goes out: a client that has its upgrade
                    // must find it counted, whichever thread runs first.
                    #[allow(clippy::result_large_err)] // tungstenite's callback type
                    let count = |_: &tungstenite::handshake::server::Request,
                                 response: tungstenite::handshake::server::Response| {
                        accepted.fetch_add(1, Ordering::SeqCst);
                        Ok(response)
                    };
                    let Ok(mut ws) = tungstenite::accept_hdr(stream, count) else {
                        return;
                    };
                    open.fetch_add(1, Ordering::SeqCst);
                    loop {
                        match ws.read() {
                            Ok(msg) if msg.is_text() || msg.is_binary() => {
                                if ws.send(msg).is_err() {
                                    break;
                                }
                            }
                            Ok(tungstenite::Message::Close(_)) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    let _ = ws.flush();
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        EchoServer {
            addr,
            open,
            accepted,
        }
    }

    pub fn open_now(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}
