//! `cargo xtask`: set-up, build, run, test, vm-test and bench for proxyguard.
#![forbid(unsafe_code)]

mod bench;
mod bench_kernel;
mod bench_watch;
mod build;
mod cmd;
mod counts;
mod deb;
mod docs;
mod fuzz;
mod initramfs;
mod peers;
mod qemu;
mod run;
mod setup;
mod system_vm;
mod test;
mod vm;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "proxyguard's build and test driver")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install what building and testing need (idempotent; fast when all is present).
    Setup,
    /// Set up, then build the workspace (the kernel object is embedded in proxyguard).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Regenerate docs/configuration.md from the config template and docs/cli.md from the CLI (unit
    /// tests check both).
    Docs,
    /// Build the release binary and a .deb of it (binary, unit, default config, completions).
    Deb {
        /// Stamp the kernel object (so it differs from an unstamped build's) and version the
        /// package X+STAMP, an upgrade of X: for the upgrade test. Builds in target/stamped.
        #[arg(long, value_name = "STAMP")]
        stamp: Option<String>,
    },
    /// The L7 tests' Python peers (LiteLLM, openai): make the tests' venv hold exactly the pins of
    /// tests/py/requirements.txt (what setup does), or with --latest run the L7 tests against
    /// today's releases in a venv of their own and report what differs from the pins.
    Peers {
        #[arg(long)]
        latest: bool,
    },
    /// Set up and build, then run `proxyguard run` on the embedded default config.
    Run {
        /// Extra arguments for `proxyguard run`, after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up, then fmt, clippy, unit tests, native privileged tests, the VM tests, and a short
    /// run of every fuzz target (cargo-fuzz, nightly).
    Test {
        /// Skip the VM stage (it is still required for CI; this is for quick local loops).
        #[arg(long)]
        no_vm: bool,
        /// Skip the fuzz stage (it is still required for CI; this is for quick local loops).
        #[arg(long)]
        no_fuzz: bool,
        /// The fuzz stage always runs now; accepted so older command lines still work.
        #[arg(long, hide = true, conflicts_with = "no_fuzz")]
        fuzz: bool,
        /// Seconds per fuzz target.
        #[arg(long, value_name = "SECS", default_value_t = 20)]
        fuzz_secs: u64,
    },
    /// Only the fuzz stage: build the cargo-fuzz targets in fuzz/ and run each (or the named ones)
    /// from its seeds; a crash fails and names the saved input.
    Fuzz {
        /// Seconds per target.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        secs: u64,
        /// Targets to run (default: all).
        targets: Vec<String>,
    },
    /// Every benchmark, each against a peer measured in the same run: L7 (direct, proxyguard and
    /// nginx-as-guard in interleaved rounds: wrk at saturation, the paced client at half of
    /// proxyguard's peak; a 10-minute soak with RSS and descriptors sampled), the provider gateway's added
    /// latency against an HTTPS provider, kernel (connection flood,
    /// SYN-flood cost, XDP program cost), and the environ watch's openat overhead. Writes
    /// target/bench/results.json. Needs root.
    Bench {
        /// A short run (about 5 minutes, a 60 s soak) for a quick look.
        #[arg(long)]
        quick: bool,
    },
    /// The environ watch's cost on an open/close loop (as root), at the tier the kernel allows
    /// within `--tier`; prints the JSON figures (`cargo xtask bench` runs it at `auto`).
    BenchWatch {
        /// `[watch] tier`: auto, probe or tracepoints.
        #[arg(long, default_value = "auto")]
        tier: String,
        /// Open/close pairs per round.
        #[arg(long, default_value_t = 1_000_000)]
        iterations: u64,
        /// `[watch] temp_files`: report (the default config) or fix (adds the created-files
        /// record, which only fix mode attaches).
        #[arg(long, default_value = "report")]
        temp_files: String,
        /// Time this proxyguard binary (with its eBPF object under `DIR/build/proxyguard-*/out`)
        /// instead of building the workspace's: an earlier build, for a before/after pair.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
    },
    /// Boot Debian's kernel under QEMU (TCG, BPF LSM on) and run every privileged test inside.
    VmTest {
        /// Boot this kernel image instead of the cached Debian one.
        #[arg(long, value_name = "PATH")]
        kernel: Option<PathBuf>,
        /// Give up (and fail) after this many seconds.
        #[arg(long, default_value_t = 1200)]
        timeout: u64,
        /// Run only this test binary (`kernel_environ`, say); repeat for more. All by default.
        #[arg(long, value_name = "BINARY")]
        only: Vec<String>,
        /// Run the tests' timed loops at full length (one short round otherwise): the figures
        /// this host's kernel cannot give, such as the environ watch's open probe tier's cost.
        #[arg(long)]
        benches: bool,
    },
    /// Boot Debian 12 with systemd as PID 1 under QEMU and run the operator's journey there: the
    /// .deb with apt, the unit under systemd, reload, crash and watchdog restarts, the exposure
    /// score online, a hardened guarded service, an upgrade with a bind loop, and purge.
    SystemVm {
        /// Give up (and fail) after this many seconds.
        #[arg(long, default_value_t = 1500)]
        timeout: u64,
    },
    /// The provider gateway's added latency: wrk against a local HTTPS provider directly and
    /// through the gateway, with connection reuse, at half of the gateway's peak; the figures
    /// also go to target/bench/gateway.json.
    BenchGateway {
        /// Short phases (3 s instead of 10 s each).
        #[arg(long)]
        quick: bool,
    },
    /// Only the fleet part of `bench`: one proxyguard with its limits local and one with
    /// `[fleet]` on a Redis on loopback (peak, CPU and Redis commands per request, the latency
    /// Redis adds); the figures also go to target/bench/fleet.json.
    BenchFleet {
        /// Short phases (3 s, 3 rounds).
        #[arg(long)]
        quick: bool,
        /// The fixed paced rates (req/s) the added latency is measured at, besides half of the
        /// peak.
        #[arg(long, value_delimiter = ',', default_values_t = [bench::fleet::LIGHT])]
        rates: Vec<f64>,
    },
    /// Only the L7 part of `bench` (direct, proxyguard, nginx-as-guard; RSS; the soak); the
    /// figures also go to target/bench/l7.json.
    BenchL7 {
        /// Short phases (3 s, 3 rounds, a 60 s soak).
        #[arg(long)]
        quick: bool,
    },
    /// The bench's paced open-loop load client (run by `bench` as its own process): a fixed
    /// schedule of requests over keep-alive connections, latency from each scheduled send; prints
    /// one JSON report.
    #[command(hide = true)]
    Pace(bench::pace::Args),
    /// Kernel benchmarks (as root): connection flood, SYN-flood cost and XDP program cost, in
    /// the benchmark's own namespaces; the figures also go to target/bench/kernel.json.
    BenchKernel {
        /// Short phases: about two minutes instead of about four.
        #[arg(long)]
        quick: bool,
    },
    /// Only bench-kernel's BPF_PROG_TEST_RUN rounds of the XDP limiter against xdp_pass (as
    /// root); the figures also go to target/bench/xdp-test-run.json.
    BenchXdpTestRun {
        #[arg(long, default_value_t = 15)]
        rounds: usize,
        /// Only save the limiter builds' translated code (`bpftool prog dump xlated`) of this
        /// object, for instance an older build's, and run nothing.
        #[arg(long)]
        xlated_of: Option<std::path::PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Setup => setup::run(),
        Command::Build { release } => {
            setup::run()?;
            build::workspace(release)
        }
        Command::Docs => docs::run(),
        Command::Deb { stamp } => {
            setup::run()?;
            let deb = deb::run_with(stamp.as_deref())?;
            println!("deb: {}", deb::inspect(&deb)?);
            Ok(())
        }
        Command::Run { args } => run::run(&args),
        Command::Peers { latest: false } => peers::ensure_pinned(),
        Command::Peers { latest: true } => {
            setup::run()?;
            peers::latest()
        }
        Command::Test {
            no_vm,
            no_fuzz,
            fuzz: _,
            fuzz_secs,
        } => test::run(test::Options {
            vm: !no_vm,
            fuzz: !no_fuzz,
            fuzz_secs,
        }),
        Command::Fuzz { secs, targets } => {
            setup::run()?;
            let summary = fuzz::run(secs, &targets)?;
            if summary.counts.failed > 0 {
                anyhow::bail!(summary.detail);
            }
            println!("fuzz: {}", summary.detail);
            Ok(())
        }
        Command::Bench { quick } => bench::run(quick),
        Command::VmTest {
            kernel,
            timeout,
            only,
            benches,
        } => {
            let summary = vm::run(
                kernel.as_deref(),
                std::time::Duration::from_secs(timeout),
                &vm::Selection {
                    only: &only,
                    benches,
                },
            )?;
            summary.into_result()
        }
        Command::BenchWatch {
            tier,
            iterations,
            temp_files,
            binary,
        } => {
            let binary = match binary {
                Some(binary) => binary,
                None => {
                    build::workspace(false)?;
                    build::proxyguard_binary()
                }
            };
            let figures = bench_watch::run_tier(&binary, iterations, &tier, &temp_files)?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
            Ok(())
        }
        Command::SystemVm { timeout } => {
            setup::run()?;
            let packages = system_vm::packages()?;
            let summary = system_vm::run(&packages, std::time::Duration::from_secs(timeout))?;
            summary.into_result()
        }
        Command::BenchGateway { quick } => {
            let figures = bench::gateway::run(quick)?;
            let path = build::target_dir().join("bench/gateway.json");
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
            println!("bench-gateway: figures in {}", path.display());
            Ok(())
        }
        Command::BenchFleet { quick, rates } => {
            let figures = bench::fleet::run_with(quick, &rates)?;
            let path = build::target_dir().join("bench/fleet.json");
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
            println!("bench-fleet: figures in {}", path.display());
            Ok(())
        }
        Command::Pace(args) => bench::pace::main(&args),
        Command::BenchL7 { quick } => {
            let figures = bench::l7(quick)?;
            let path = build::target_dir().join("bench/l7.json");
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            std::fs::write(&path, serde_json::to_string_pretty(&figures)?)?;
            println!("bench-l7: figures in {}", path.display());
            Ok(())
        }
        Command::BenchKernel { quick } => {
            let figures = bench_kernel::run(quick)?;
            let path = build::target_dir().join("bench/kernel.json");
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            std::fs::write(&path, serde_json::to_string_pretty(&figures)? + "\n")?;
            println!("bench-kernel: figures written to {}", path.display());
            Ok(())
        }
        Command::BenchXdpTestRun {
            xlated_of: Some(object),
            ..
        } => bench_kernel::xlated_of(&object),
        Command::BenchXdpTestRun { rounds, .. } => {
            let figures = bench_kernel::test_runs(rounds)?;
            let path = build::target_dir().join("bench/xdp-test-run.json");
            std::fs::create_dir_all(path.parent().expect("has a parent"))?;
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&figures)?
                    + "
",
            )?;
            Ok(())
        }
    }
}
