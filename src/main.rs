//! The `tollgate` command line.

#![deny(clippy::unwrap_used)]

use clap::{Args, Parser, Subcommand};

/// mimalloc: the request path allocates and frees many small buffers per request, which
/// glibc's allocator handled at about a tenth of the proxy's CPU time.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;
use tollgate::server::{self, ProcessOptions, StartError};

#[derive(Parser, Debug)]
#[command(
    name = "tollgate",
    version,
    about = "An edge reverse proxy with fleet-wide rate limits backed by Redis",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// With no subcommand, tollgate runs the proxy (`tollgate run`).
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (the default).
    Run(RunArgs),
    /// Validate a config file like `nginx -t`: exit 0 when valid, 2 when not.
    Check(ConfigArg),
    /// Bring the whole system up: stub services A and B, and the proxy on config.yaml.
    Demo(ConfigArg),
}

#[derive(Args, Debug, Clone)]
struct ConfigArg {
    /// The YAML config file.
    #[arg(short, long, default_value = "config.yaml")]
    config: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Fork into the background (Pingora daemon mode; set server.error_log for its log).
    #[arg(short, long)]
    daemon: bool,
    /// Take over the listening sockets of a running tollgate, which must then get SIGQUIT
    /// (zero-downtime upgrade; see docs/operations.md).
    #[arg(short, long)]
    upgrade: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run(&cli.run, None),
        Some(Command::Run(args)) => run(&args, None),
        Some(Command::Check(args)) => {
            let (report, valid) = tollgate::check::check(&args.config);
            if valid {
                print!("{report}");
                ExitCode::SUCCESS
            } else {
                eprintln!("{report}");
                ExitCode::from(tollgate::check::INVALID)
            }
        }
        Some(Command::Demo(args)) => {
            let run_args = RunArgs {
                config: args,
                daemon: false,
                upgrade: false,
            };
            run(&run_args, Some(()))
        }
    }
}

fn run(args: &RunArgs, demo: Option<()>) -> ExitCode {
    let options = ProcessOptions {
        daemon: args.daemon,
        upgrade: args.upgrade,
    };
    // Logging starts at the config's level if the file can be read; errors below still print.
    let level = tollgate::config::load(&args.config.config)
        .map(|l| l.config.log.level)
        .unwrap_or_else(|_| "info".into());
    tollgate::logging::init(&level);
    tollgate::clock::init();

    let prepared = if demo.is_some() {
        match tollgate::config::load(&args.config.config) {
            Ok(loaded) => match tollgate::demo::start_stubs(&loaded.config) {
                Ok(stubs) => {
                    let prepared = server::prepare(&args.config.config, &options);
                    if prepared.is_ok() {
                        println!("{}", tollgate::demo::banner(&loaded.config, &stubs));
                    }
                    prepared
                }
                Err(e) => {
                    eprintln!("tollgate demo: {e}");
                    return ExitCode::FAILURE;
                }
            },
            Err(e) => Err(StartError::Config(e)),
        }
    } else {
        server::prepare(&args.config.config, &options)
    };
    match prepared {
        Ok(prepared) => {
            server::run(prepared, &options);
            ExitCode::SUCCESS
        }
        Err(e @ StartError::Config(_)) => {
            eprintln!("{e}");
            ExitCode::from(tollgate::check::INVALID)
        }
        Err(e) => {
            eprintln!("tollgate: {e}");
            ExitCode::FAILURE
        }
    }
}
