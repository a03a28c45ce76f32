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
    /// Record a CPU profile of the whole host (or one process) and write it to a file.
    Profile {
        /// How long to sample, e.g. 10s or 1m.
        #[arg(long, default_value = "10s", value_parser = humantime_serde::re::humantime::parse_duration)]
        duration: std::time::Duration,
        /// Only this process (its threads included).
        #[arg(long)]
        pid: Option<u32>,
        /// Samples per second per CPU (1-999).
        #[arg(long, default_value_t = 99, value_parser = clap::value_parser!(u32).range(1..=999))]
        hz: u32,
        /// pprof (gzipped protobuf), otlp (one binary ExportProfilesServiceRequest), folded
        /// (`frame;frame count` lines) or svg (a flame graph).
        #[arg(long, value_enum, default_value_t = ProfileFormat::Pprof)]
        format: ProfileFormat,
        /// Where to write it (`-` for standard output).
        #[arg(long, short)]
        output: PathBuf,
        /// In-kernel aggregation (the default) or a ring buffer record per sample.
        #[arg(long, hide = true, default_value = "aggregate")]
        mode: String,
        /// How user stacks are walked: auto, frame_pointers or dwarf (default: the config
        /// file's probes.profiler.unwinder, auto without one).
        #[arg(long)]
        unwinder: Option<String>,
        /// Config file whose probes.profiler section is used (the usual places without it).
        #[arg(long)]
        config: Option<PathBuf>,
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

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProfileFormat {
    Pprof,
    Otlp,
    Folded,
    Svg,
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
        Command::Profile {
            duration,
            pid,
            hz,
            format,
            output,
            mode,
            unwinder,
            config,
        } => {
            let _ = logging::init("warn", agent::config::LogFormat::Text);
            let cfg = Overrides {
                config,
                ..Default::default()
            }
            .load()?;
            let mut prof = cfg.probes.profiler;
            if let Some(u) = unwinder {
                prof.unwinder = serde_yaml_ng::from_str(&u).map_err(|_| {
                    anyhow::anyhow!(
                        "--unwinder {u:?} is not an unwinder\nfix: use auto, frame_pointers or dwarf"
                    )
                })?;
            }
            profile(prof, duration, pid, hz, format, &output, &mode)
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

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// `agent profile`: record, symbolize, encode, write. Ctrl-C ends the recording early.
fn profile(
    base: agent::config::ProfilerConfig,
    duration: std::time::Duration,
    pid: Option<u32>,
    hz: u32,
    format: ProfileFormat,
    output: &std::path::Path,
    mode: &str,
) -> Result<ExitCode> {
    use agent::{config::ProfilerMode, probes::profiler, profile};
    if let Some(p) = pid {
        if !std::path::Path::new(&format!("/proc/{p}")).exists() {
            anyhow::bail!("process {p} does not exist\nfix: give the pid of a running process (host pid namespace)");
        }
    }
    let cfg = agent::config::ProfilerConfig {
        frequency: hz,
        mode: match mode {
            "stream" => ProfilerMode::Stream,
            _ => ProfilerMode::Aggregate,
        },
        ..base
    };
    if cfg.unwinder == agent::config::ProfilerUnwinder::Dwarf && cfg.mode == ProfilerMode::Stream {
        anyhow::bail!("--unwinder dwarf does not work with --mode stream\nfix: drop one of them");
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    let p = profiler::record(&cfg, duration, pid, &INTERRUPTED, |cpus| {
        eprintln!("sampling {cpus} CPUs at {hz} Hz for {duration:?} (Ctrl-C ends early)");
    })?;
    let bytes = match format {
        ProfileFormat::Pprof => profile::pprof::encode(&p),
        ProfileFormat::Otlp => {
            use prost::Message;
            let base = agent::export::resource::build("", |k| std::env::var(k).ok());
            // One-shot: no instance of a running agent to name.
            let base: Vec<_> = base
                .attributes
                .into_iter()
                .filter(|kv| kv.key != "service.instance.id")
                .collect();
            profile::otlp::encode(&p, &base).encode_to_vec()
        }
        ProfileFormat::Folded => profile::folded::render(&p).into_bytes(),
        ProfileFormat::Svg => {
            let title = match pid {
                Some(pid) => format!("CPU: pid {pid}, {:?} at {hz} Hz", duration),
                None => format!("CPU: {}, {:?} at {hz} Hz", profiler::host_name(), duration),
            };
            profile::svg::render(&p, &title)?
        }
    };
    let samples: u64 = p
        .processes
        .iter()
        .flat_map(|x| &x.samples)
        .map(|s| s.count)
        .sum();
    if output.as_os_str() == "-" {
        use std::io::Write;
        std::io::stdout().write_all(&bytes)?;
    } else {
        std::fs::write(output, &bytes).map_err(|e| {
            anyhow::anyhow!(
                "cannot write {}: {e}\nfix: give a writable --output path",
                output.display()
            )
        })?;
    }
    eprintln!(
        "{samples} samples from {} processes written to {}",
        p.processes.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}
