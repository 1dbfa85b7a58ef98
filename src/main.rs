//! gureum: a KVM microVM monitor. `main` is the only place that prints an error and picks the
//! exit code.

mod arch;
mod bench;
mod cli;
mod config;
mod container;
mod event_loop;
mod host_check;
mod loader;
mod phases;
mod term;
mod vcpu;
mod virtio_devices;
mod vmm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cli::{BenchCommand, BootArgs, Cli, Command};
use crate::config::{FirecrackerConfig, VmConfig, VmOverrides};
use crate::host_check::KvmKind;

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Config(#[from] config::Error),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error(transparent)]
    Vmm(#[from] vmm::Error),
    #[error(transparent)]
    HostCheck(#[from] host_check::Error),
    #[error(transparent)]
    Bench(#[from] bench::Error),
    #[error(transparent)]
    Container(#[from] container::Error),
    #[error(transparent)]
    Compare(#[from] bench::compare::Error),
    #[error("cannot read the process file {0}")]
    ProcessFile(PathBuf, #[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("cannot make the output directory {0}")]
    OutDir(PathBuf, #[source] std::io::Error),
    #[error("unknown --format {0:?} (table or json)")]
    Format(String),
    #[error("--timeout must be a positive number of seconds, not {0}")]
    Timeout(f64),
    #[error(
        "this host's KVM is PVM (kvm_pvm): a Linux guest's userspace cannot run here and its \
         kernel takes minutes under emulation; pass --allow-pvm-linux to boot it anyway"
    )]
    PvmLinux,
    #[error(
        "no kernel given and the default guest is not built: run guest-kernels/build.sh, or pass --kernel"
    )]
    NoDefaultGuest,
}

/// One line: the error and each cause after it (skipping causes whose text some crates already
/// fold into their own message).
fn chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}

fn main() {
    let start = Instant::now();
    let cli = Cli::parse_fast();
    let log = cli.log.clone();
    let json_log = cli.log_format == "json";
    let code = match run(cli, start) {
        Ok(code) => code,
        Err(e) => {
            let line = chain(&e);
            eprintln!("gureum: {line}");
            if let Some(path) = log {
                log_error(&path, &line, json_log);
            }
            match e {
                Error::Container(c) => c.exit_code(),
                _ => 1,
            }
        }
    };
    std::process::exit(code);
}

/// Appends an error to --log, as text or as runc's JSON lines (containerd reads the last one).
fn log_error(path: &std::path::Path, line: &str, json: bool) {
    use std::io::Write;
    let text = if json {
        serde_json::json!({"level": "error", "msg": line, "time": container::state::now_rfc3339()})
            .to_string()
    } else {
        line.to_string()
    };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{text}");
    }
}

fn run(cli: Cli, start: Instant) -> Result<i32, Error> {
    let g = container::Global {
        root: cli.root,
        isolation: cli.isolation,
    };
    match cli.command {
        Command::Run {
            create,
            tty,
            phases,
            image,
            command,
        } => {
            let mut opts = create_options(&create, tty);
            let since_main = u64::try_from(start.elapsed().as_micros()).unwrap_or(0);
            opts.phases_since = phases.then(|| container::state::monotonic_us() - since_main);
            Ok(match image {
                Some(path) => container::run_image(&g, &create.id, &path, &command, &opts)?,
                None => container::run(&g, &create.id, &create.bundle, &opts)?,
            })
        }
        Command::Create(create) => {
            container::create(
                &g,
                &create.id,
                &create.bundle,
                &create_options(&create, false),
            )?;
            Ok(0)
        }
        Command::Start { id } => Ok(container::start(&g, &id).map(|()| 0)?),
        Command::State { id } => {
            println!("{}", container::state(&g, &id)?);
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            Ok(container::kill(&g, &id, &signal, all).map(|()| 0)?)
        }
        Command::Delete { force, id } => Ok(container::delete(&g, &id, force).map(|()| 0)?),
        Command::List { format, quiet } => {
            match (format.as_str(), quiet) {
                (_, true) => container::ids(&g).iter().for_each(|id| println!("{id}")),
                ("json", _) => println!("{}", container::list(&g, true)),
                ("table", _) => println!("{}", container::list(&g, false)),
                _ => return Err(Error::Format(format)),
            }
            Ok(0)
        }
        Command::Exec(args) => exec(&g, args),
        command => machine(command, start),
    }
}

fn create_options(args: &cli::CreateArgs, tty: bool) -> container::CreateOptions {
    container::CreateOptions {
        pid_file: args.pid_file.clone(),
        console_socket: args.console_socket.clone(),
        tty,
        phases_since: None,
    }
}

fn exec(g: &container::Global, args: cli::ExecArgs) -> Result<i32, Error> {
    let mut opts = container::ExecOptions {
        args: args.command,
        env: args.env,
        cwd: args.cwd,
        user: args.user,
        tty: args.tty,
        detach: args.detach,
        pid_file: args.pid_file,
        console_socket: args.console_socket,
    };
    if let Some(path) = &args.process {
        let text = std::fs::read(path).map_err(|e| Error::ProcessFile(path.clone(), e.into()))?;
        let p: oci_spec::runtime::Process = serde_json::from_slice(&text)
            .map_err(|e| Error::ProcessFile(path.clone(), e.into()))?;
        let p = container::bundle::process_settings(&p).map_err(|e| Error::Container(e.into()))?;
        opts.args = p.args;
        opts.env.extend(p.env);
        opts.cwd = Some(p.cwd);
        opts.user = Some(format!("{}:{}", p.uid, p.gid));
        opts.tty |= p.terminal;
    }
    Ok(container::exec(g, &args.id, &opts)?)
}

/// The VM-level commands: boot, host-check, bench.
fn machine(command: Command, start: Instant) -> Result<i32, Error> {
    match command {
        Command::Boot(args) => boot(&args, start),
        Command::HostCheck { json } => {
            let report = host_check::check()?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                println!("{report}");
            }
            Ok(0)
        }
        Command::Bench(BenchCommand::Boot {
            boot,
            runs,
            no_qemu,
        }) => {
            let config = resolve_config(&boot)?;
            println!("{}", bench::boot(&config, runs, !no_qemu)?);
            Ok(0)
        }
        Command::Bench(BenchCommand::Devices {
            kernel,
            runs,
            no_qemu,
        }) => {
            println!("{}", bench::devices::run(&kernel, runs, !no_qemu)?);
            Ok(0)
        }
        Command::Bench(BenchCommand::Compare {
            runs,
            workload,
            out,
            density,
            test_guest,
            only,
        }) => {
            std::fs::create_dir_all(&out).map_err(|e| Error::OutDir(out.clone(), e))?;
            let opts = bench::compare::Options {
                runs,
                workload,
                out: out.clone(),
                density,
                test_guest,
                only,
            };
            let report = bench::compare::run(&opts)?;
            println!("{}", bench::compare::report::table(&report));
            println!(
                "wrote {}/compare.json, report.md, startup.svg, memory.svg",
                out.display()
            );
            Ok(0)
        }
        _ => unreachable!("container commands are handled in run"),
    }
}

/// Where guest-kernels/build.sh leaves the default guest.
pub fn default_guest() -> (PathBuf, PathBuf) {
    let cache = std::env::var_os("GUREUM_CACHE").unwrap_or_else(|| "/var/cache/gureum".into());
    let dir = PathBuf::from(cache).join("default");
    (dir.join("vmlinux"), dir.join("initramfs.cpio"))
}

/// Defaults < config file < flags, validated.
fn resolve_config(args: &BootArgs) -> Result<VmConfig, Error> {
    let file = match &args.config {
        Some(path) => FirecrackerConfig::from_file(path)?.into(),
        None => VmOverrides::default(),
    };
    let mut flags = VmOverrides {
        kernel: args.kernel.clone(),
        initrd: args.initrd.clone(),
        cmdline: args.cmdline.clone(),
        vcpus: args.vcpus,
        memory_mib: args.memory,
        disks: (!args.disk.is_empty()).then(|| args.disk.clone()),
        nets: (!args.net.is_empty()).then(|| args.net.clone()),
        vsock: args.vsock.clone(),
        rng: args.rng.then_some(true),
    };
    if flags.kernel.is_none() && file.kernel.is_none() {
        let (kernel, initrd) = default_guest();
        if !kernel.exists() || !initrd.exists() {
            return Err(Error::NoDefaultGuest);
        }
        flags.kernel = Some(kernel);
        flags.initrd = flags.initrd.or(Some(initrd));
    }
    Ok(file.overridden_by(flags).into_config()?)
}

fn boot(args: &BootArgs, start: Instant) -> Result<i32, Error> {
    let config = resolve_config(args)?;
    let timeout = args
        .timeout
        .map(|s| {
            Duration::try_from_secs_f64(s)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or(Error::Timeout(s))
        })
        .transpose()?;
    let (_, is_linux) = loader::identify(&config.kernel)?;
    if is_linux && host_check::kvm_kind().0 == KvmKind::Pvm {
        if !args.allow_pvm_linux {
            return Err(Error::PvmLinux);
        }
        eprintln!(
            "gureum: warning: PVM host: this Linux guest's kernel runs emulated and its userspace cannot run"
        );
    }
    let mut phases = phases::Phases::new(start);
    let vmm = vmm::Vmm::try_from(&config)?;
    let raw_terminal = term::RawTerminal::enable(0);
    let outcome = vmm.run(timeout, &mut phases);
    drop(raw_terminal);
    // gureum made the vsock socket; the process exits without running destructors.
    if let Some(v) = &config.vsock {
        let _ = std::fs::remove_file(&v.uds);
    }
    let outcome = outcome?;
    if outcome.exit_code() != 0 {
        eprintln!("gureum: {outcome}");
    }
    if args.phases {
        eprintln!("{}", phases.report());
    }
    Ok(outcome.exit_code())
}
