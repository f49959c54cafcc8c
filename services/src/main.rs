//! `stub-service --name a --listen 127.0.0.1:8001`: a fast stub backend for tollgate.

use clap::Parser;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(version, about = "A stub HTTP backend that answers any request with JSON naming itself", long_about = None)]
struct Args {
    /// The service name reported in every answer (`{"service":"a",...}`).
    #[arg(long, default_value = "a")]
    name: String,
    /// Address to listen on; with port 0 the system picks one, printed on stdout.
    #[arg(long, default_value = "127.0.0.1:8001")]
    listen: SocketAddr,
    /// Fixed delay before every answer except /health, e.g. 50ms or 2s.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    delay: Duration,
    /// Share of requests (0.0 to 1.0) answered with 500.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    fail_rate: f64,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (digits, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 50ms or 2s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        _ => Err(format!("`{s}` needs a unit: ms or s")),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}` must be a number from 0.0 to 1.0")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let options = stub_service::Options {
        name: args.name.clone(),
        listen: args.listen,
        delay: args.delay,
        fail_rate: args.fail_rate,
        threads: args.threads,
    };
    match stub_service::spawn(options) {
        Ok((handle, bound)) => {
            // On stdout, one line, so a caller that asked for port 0 can read the port.
            println!("stub-service {} listening on http://{bound}", args.name);
            let _ = handle.join();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "stub-service {}: cannot listen on {}: {e}",
                args.name, args.listen
            );
            ExitCode::from(2)
        }
    }
}
