//! A TCP relay that delays every byte by a fixed time in each direction, to put Redis a
//! network hop away from the proxies in the load harness (this kernel has no `netem`):
//! `delay_relay LISTEN TARGET DELAY_US`.
//!
//! Each direction of a connection is a reader thread that stamps what it read with the
//! time it is due and a writer thread that sends it then, so pipelined traffic stays
//! pipelined: a delay is a delay, not a limit on requests in flight. Threads sleep with
//! `nanosleep`, so the delay holds to tens of microseconds where tokio's timer rounds up
//! to the next millisecond; the harness measures what the relay adds.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn relay_one_way(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (due, pending) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if due
                        .send((Instant::now() + delay, buf[..n].to_vec()))
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((at, bytes)) = pending.recv() {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if to.write_all(&bytes).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}

fn main() {
    let mut args = std::env::args().skip(1);
    let usage = "usage: delay_relay LISTEN TARGET DELAY_US";
    let (Some(listen), Some(target), Some(delay)) = (args.next(), args.next(), args.next()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let (Ok(target), Ok(delay_us)) = (target.parse::<SocketAddr>(), delay.parse::<u64>()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let delay = Duration::from_micros(delay_us);
    let listener = match TcpListener::bind(&listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("delay_relay: cannot listen on {listen}: {e}");
            std::process::exit(1);
        }
    };
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(server) = TcpStream::connect(target) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let (Ok(client_read), Ok(server_read)) = (client.try_clone(), server.try_clone()) else {
            continue;
        };
        relay_one_way(client_read, server, delay);
        relay_one_way(server_read, client, delay);
    }
}
