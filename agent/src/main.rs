//! `agent`: the command line. Errors print as one line of cause and one of fix.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use agent::{
    config::{Config, DEFAULT_YAML},
    logging, preflight,
    runtime::{self, Overrides},
};

#[derive(Parser)]
#[command(name = "agent", version = agent::VERSION, about = "eBPF node agent: kernel probes to OTLP, with a local status endpoint")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (needs root or CAP_BPF + CAP_PERFMON + CAP_SYS_ADMIN).
    Run {
        /// YAML config file; without it the embedded default runs (`agent config default`).
        #[arg(long, short, env = "AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// Status endpoint address (default 127.0.0.1:9464).
        #[arg(long)]
        status_addr: Option<SocketAddr>,
        /// Directory for locally written data (default ./agent-output).
        #[arg(long)]
        output_dir: Option<PathBuf>,
    },
    /// Preflight: kernel, BTF, tracefs, capabilities and every probe's hooks.
    Check {
        #[arg(long, short, env = "AGENT_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print or validate configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print the version.
    Version,
    /// Send one small CPU profile over OTLP (checks the profiles path end to end).
    #[command(hide = true)]
    ExportProfile {
        /// Receiver URL (HTTP: the full /v1development/profiles URL).
        #[arg(long)]
        url: String,
        #[arg(long, default_value = "http/protobuf")]
        protocol: String,
    },
    /// Measure the OTLP exporter on this thread (used by `cargo xtask bench export`).
    #[command(hide = true)]
    ExportBench {
        /// Receiver URL (HTTP: the full /v1/metrics URL).
        #[arg(long)]
        url: String,
        /// grpc, http/protobuf or http/json.
        #[arg(long, default_value = "http/protobuf")]
        protocol: String,
        /// gzip or none.
        #[arg(long, default_value = "gzip")]
        compression: String,
        /// Histogram series per export (each also has a counter).
        #[arg(long, default_value_t = 1000)]
        series: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the embedded default config (YAML, commented).
    Default,
    /// Validate a config file (environment overrides included); exit 1 if invalid.
    Validate { file: PathBuf },
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            // Our errors' Display is "cause\nfix: ...".
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::ExportBench {
            url,
            protocol,
            compression,
            series,
            seconds,
        } => {
            let protocol = agent::config::Protocol::parse(&protocol)
                .ok_or_else(|| anyhow::anyhow!("unknown protocol {protocol}"))?;
            let compression = match compression.as_str() {
                "gzip" => agent::config::Compression::Gzip,
                _ => agent::config::Compression::None,
            };
            let spool =
                std::env::temp_dir().join(format!("agent-export-bench-{}", std::process::id()));
            // One thread: the figure is what one core sustains.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(agent::export::bench::run(
                &url,
                protocol,
                compression,
                series,
                seconds,
                &spool,
            ));
            let _ = std::fs::remove_dir_all(&spool);
            let r = r.map_err(|e| anyhow::anyhow!(e))?;
            println!(
                "points {} requests {} seconds {:.3} points_per_second {:.0} wire_bytes_per_point {:.2} protobuf_bytes_per_point {:.2} failures {}",
                r.points,
                r.requests,
                r.seconds,
                r.points as f64 / r.seconds.max(1e-9),
                r.wire_bytes_per_point,
                r.raw_bytes_per_point,
                r.failures
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::ExportProfile { url, protocol } => {
            let protocol = agent::config::Protocol::parse(&protocol)
                .ok_or_else(|| anyhow::anyhow!("unknown protocol {protocol}"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let r = rt.block_on(agent::export::bench::send_sample_profile(
                &url,
                protocol,
                agent::config::Compression::Gzip,
            ));
            let r = r.map_err(|e| anyhow::anyhow!(e))?;
            println!("{r}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("agent {}", agent::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            action: ConfigAction::Default,
        } => {
            print!("{DEFAULT_YAML}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Config {
            action: ConfigAction::Validate { file },
        } => {
            let cfg = Config::load(Some(&file))?;
            println!("{}: valid (config hash {})", file.display(), cfg.hash());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { config } => {
            let cfg = Overrides {
                config,
                ..Default::default()
            }
            .load()?;
            let _ = logging::init("warn", cfg.log.format);
            let (rows, any_probe) = preflight::run(&cfg);
            print!("{}", preflight::render(&rows));
            if any_probe {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no probe can run on this host (see the fixes above)");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Run {
            config,
            status_addr,
            output_dir,
        } => {
            let overrides = Overrides {
                config,
                status_addr,
                output_dir,
            };
            let cfg = overrides.load()?;
            let log = logging::init(&cfg.log.level, cfg.log.format)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("agent")
                .build()?;
            rt.block_on(runtime::run(cfg, overrides, log))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
