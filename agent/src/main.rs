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
