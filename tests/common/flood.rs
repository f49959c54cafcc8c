//! A fast request loop on raw keep-alive connections, for floods the test client library
//! would make slow: each worker writes a request, reads the whole response, repeats.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One response: its status and its body.
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends requests `0..total` (made by `request(i)`) over `workers` connections and hands
/// each answer to `seen(i, answer)`.
pub fn flood<R, S>(addr: SocketAddr, total: usize, workers: usize, request: R, seen: S)
where
    R: Fn(usize) -> Vec<u8> + Send + Sync + 'static,
    S: Fn(usize, Answer) + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let seen = Arc::new(seen);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (next, request, seen) = (next.clone(), request.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let (writer, reader) = conn.get_or_insert_with(|| open(addr));
                    writer.write_all(&request(i)).expect("write request");
                    let (answer, keep_alive) = read_answer(reader);
                    seen(i, answer);
                    if !keep_alive {
                        conn = None;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("flood worker");
    }
}

fn open(addr: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    (stream, reader)
}

fn read_answer(reader: &mut BufReader<TcpStream>) -> (Answer, bool) {
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    let mut length = 0;
    let mut keep_alive = true;
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().expect("content-length");
        } else if lower.starts_with("connection:") && lower.contains("close") {
            keep_alive = false;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    let body = String::from_utf8_lossy(&body).into_owned();
    (Answer { status, body }, keep_alive)
}
