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
        /// OpAMP server to be managed by: ws://, wss:// (WebSocket) or http://, https:// (plain
        /// HTTP), e.g. ws://localhost:4320/v1/opamp (overrides opamp.endpoint).
        #[arg(long)]
        opamp_endpoint: Option<String>,
    },
    /// Preflight: kernel, BTF, tracefs, capabilities, every probe's hooks, the OpAMP server.
    Check {
        #[arg(long, short, env = "AGENT_CONFIG")]
        config: Option<PathBuf>,
        /// OpAMP server to try (overrides opamp.endpoint).
        #[arg(long)]
        opamp_endpoint: Option<String>,
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
        /// Config file whose probes.profiler section and output.dir (the unwind table cache
        /// in <output.dir>/unwind-cache, when that directory exists) are used (the usual
        /// places without it).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Score a `timestamp,value` CSV file (NAB's format) with an anomaly detector; writes
    /// `timestamp,value,anomaly_score,alert` (alert: 1 where the agent would report). No
    /// privileges needed.
    Detect {
        #[arg(long, short, required_unless_present = "list")]
        input: Option<PathBuf>,
        /// Output CSV (`-` for standard output).
        #[arg(long, short, required_unless_present = "list")]
        output: Option<PathBuf>,
        /// Detector (`--list` shows them).
        #[arg(long, short, default_value = "ensemble", value_parser = agent::detection::offline::parse_kind)]
        detector: agent::detection::Kind,
        /// List the detectors (name, shipped threshold, what it does) and exit.
        #[arg(long)]
        list: bool,
    },
    /// Measure the detectors and the detection engine (used by `cargo xtask bench detect`).
    #[command(hide = true)]
    DetectBench {
        /// Detectors, in the order to run them (comma-separated).
        #[arg(long, value_delimiter = ',', value_parser = agent::detection::offline::parse_kind)]
        order: Vec<agent::detection::Kind>,
        #[arg(long, default_value_t = 1_000_000)]
        points: usize,
        #[arg(long, default_value_t = 10_000)]
        series: usize,
        /// Points per series in the engine run.
        #[arg(long, default_value_t = 100)]
        rounds: usize,
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
        /// Instead: CPU ns per data point of five OTTL statements against OTLP encoding, side
        /// by side (`--url` is not used).
        #[arg(long)]
        transform: bool,
        /// With `--transform`: only the conditions named (e.g. `--only "transform cold"`, for a
        /// profiler); all by default.
        #[arg(long)]
        only: Vec<String>,
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

/// `agent export-bench --transform`: prints the statements, then the median CPU ns per data
/// point of each condition with the range over rounds, and transform / encode per round.
fn transform_bench(series: usize, only: &[String]) -> anyhow::Result<ExitCode> {
    let rounds = 9;
    let r = agent::export::bench::transform_bench(series, rounds, 10, only)
        .map_err(|e| anyhow::anyhow!(e))?;
    for (k, s) in agent::export::bench::TRANSFORM_STATEMENTS
        .iter()
        .enumerate()
    {
        println!("transform statement s{}: {s}", k + 1);
    }
    let med = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let get = |name: &str| {
        r.conditions
            .iter()
            .find(|c| c.0 == name)
            .map(|c| c.1.clone())
    };
    for (name, v) in &r.conditions {
        let (m, lo, hi) = med(v);
        println!("transform bench {name:18} {m:8.1} ns/point (rounds {lo:.1}-{hi:.1})");
    }
    if let (Some(t), Some(e)) = (get("transform"), get("encode")) {
        let ratios: Vec<f64> = t.iter().zip(&e).map(|(a, b)| a / b).collect();
        let (m, lo, hi) = med(&ratios);
        let (tm, _, _) = med(&t);
        println!(
            "transform_ns_per_point {tm:.1} transform_over_encode {m:.2} (rounds {lo:.2}-{hi:.2}), \
             {} points per export, {rounds} rounds",
            r.points_per_export
        );
    }
    Ok(ExitCode::SUCCESS)
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
    agent::alloc::tune();
    let cli = Cli::parse();
    match cli.command {
        Command::ExportBench {
            url,
            protocol,
            compression,
            series,
            seconds,
            transform,
            only,
        } => {
            if transform {
                return transform_bench(series, &only);
            }
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
            agent::probes::profiler::unwind::cache::use_output_dir(&cfg.output.dir, false);
            profile(prof, duration, pid, hz, format, &output, &mode)
        }
        Command::Detect {
            input,
            output,
            detector,
            list,
        } => {
            use agent::detection::offline;
            if list {
                print!("{}", offline::list());
                return Ok(ExitCode::SUCCESS);
            }
            let (input, output) = (input.unwrap_or_default(), output.unwrap_or_default());
            let s = offline::run_default(&input, &output, detector)?;
            eprintln!("{}", s.line(&input, detector));
            Ok(ExitCode::SUCCESS)
        }
        Command::DetectBench {
            order,
            points,
            series,
            rounds,
        } => {
            agent::detection::bench::run(&order, points, series, rounds);
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
        Command::Check {
            config,
            opamp_endpoint,
        } => {
            let overrides = Overrides {
                config,
                opamp_endpoint,
                ..Default::default()
            };
            let cfg = overrides.load()?;
            let _ = logging::init("warn", cfg.log.format);
            let (mut rows, any_probe) = preflight::run(&cfg);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let opamp = rt.block_on(agent::opamp::check::run(&cfg, &overrides));
            let opamp_ok = opamp
                .as_ref()
                .is_none_or(|r| r.verdict != preflight::Verdict::Fail);
            rows.extend(opamp);
            print!("{}", preflight::render(&rows));
            if !any_probe {
                eprintln!("no probe can run on this host (see the fixes above)");
                return Ok(ExitCode::FAILURE);
            }
            if !opamp_ok {
                eprintln!("the OpAMP server cannot be used (see the fix above)");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            status_addr,
            output_dir,
            opamp_endpoint,
        } => {
            let overrides = Overrides {
                config,
                status_addr,
                output_dir,
                opamp_endpoint,
            };
            let cfg = overrides.load()?;
            let log = logging::init(&cfg.log.level, cfg.log.format)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("agent")
                .build()?;
            let exit = rt.block_on(runtime::run(cfg, overrides, log))?;
            // Every task is gone before the process image is replaced.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            if exit == runtime::Exit::Restart {
                let e = agent::opamp::restart::reexec();
                anyhow::bail!(
                    "cannot restart the agent: {e}\nfix: start it again (the binary moved or is not executable)"
                );
            }
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
