//! `gureum`: the whole CLI. `main` is the only place that prints an error and picks the exit
//! code.

use std::path::PathBuf;
use std::time::Instant;

use gureum::bench;
use gureum::cli::{self, BenchCommand, Cli, Command};
use gureum_runtime as container;
use gureum_vmm::boot::chain;
use gureum_vmm::{boot, host_check};

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Boot(#[from] boot::Error),
    #[error(transparent)]
    HostCheck(#[from] host_check::Error),
    #[error(transparent)]
    Api(#[from] gureum_vmm::api::client::Error),
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
    #[error("bad --memory {0:?} (expected bytes, with an optional k, m or g suffix, or -1)")]
    Bytes(String),
    #[error("cannot read the resources file {0}")]
    ResourcesFile(PathBuf, #[source] Box<dyn std::error::Error + Send + Sync>),
}

fn main() {
    let start = Instant::now();
    // A VM's process is the lean gureum-vmm where it is installed: it maps less code.
    if cli::BootOnly::is_vmm_command()
        && let Some(vmm) = boot::vmm_exe()
    {
        use std::os::unix::process::CommandExt;
        let e = std::process::Command::new(&vmm)
            .args(std::env::args_os().skip(1))
            .exec();
        eprintln!("gureum: cannot run {}: {e}", vmm.display());
        std::process::exit(1);
    }
    let cli = Cli::parse_fast();
    if cli.command.only_reports() {
        // SAFETY: restores SIGPIPE's default action (Rust's runtime ignores it) before any
        // thread or child exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
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
        isolation: cli.isolation.map(Into::into),
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
        Command::Update {
            resources,
            memory,
            cpu_quota,
            cpu_period,
            pids_limit,
            id,
        } => {
            let flags = container::bundle::Resources {
                memory_bytes: memory.as_deref().map(parse_bytes).transpose()?,
                cpu_quota_us: cpu_quota,
                cpu_period_us: cpu_period,
                pids: pids_limit,
                ..Default::default()
            };
            let file = resources.as_deref().map(read_resources).transpose()?;
            container::update(&g, &id, file.as_ref(), &flags)?;
            Ok(0)
        }
        Command::Pause { id } => Ok(container::pause(&g, &id).map(|()| 0)?),
        Command::Resume { id } => Ok(container::resume(&g, &id).map(|()| 0)?),
        Command::State { id } => {
            println!("{}", container::state(&g, &id)?);
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            Ok(container::kill(&g, &id, &signal, all).map(|()| 0)?)
        }
        Command::Delete { force, id } => Ok(container::delete(&g, &id, force).map(|()| 0)?),
        Command::Features => {
            let features = container::features::features();
            println!(
                "{}",
                serde_json::to_string_pretty(&features).unwrap_or_default()
            );
            Ok(0)
        }
        Command::List { format, quiet } => {
            match (format.as_str(), quiet) {
                (_, true) => container::ids(&g).iter().for_each(|id| println!("{id}")),
                ("json", _) => println!("{}", container::list(&g, true)),
                ("table", _) => println!("{}", container::list(&g, false)),
                _ => return Err(Error::Format(format)),
            }
            Ok(0)
        }
        Command::Ps { format, id } => {
            let pids = container::pids(&g, &id)?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string(&pids).unwrap_or_default()),
                "table" => {
                    println!("{:<8} CMD", "PID");
                    for pid in pids {
                        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                        println!("{pid:<8} {}", cmd.trim_end());
                    }
                }
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
        capabilities: None,
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
        opts.capabilities = p.capabilities;
    }
    Ok(container::exec(g, &args.id, &opts)?)
}

/// The VM-level commands: boot, host-check, bench.
fn machine(command: Command, start: Instant) -> Result<i32, Error> {
    match command {
        Command::Boot(args) => Ok(boot::boot(&args.request(), start)?),
        Command::Restore(args) => Ok(boot::boot(&args.request(), start)?),
        Command::Snapshot {
            api_sock,
            snapshot,
            mem,
            leave_paused,
        } => {
            gureum_vmm::api::client::snapshot(&api_sock, &snapshot, &mem, leave_paused)?;
            Ok(0)
        }
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
            let config = boot::resolve_config(&boot.request())?;
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
            firecracker,
            only,
        }) => {
            std::fs::create_dir_all(&out).map_err(|e| Error::OutDir(out.clone(), e))?;
            let opts = bench::compare::Options {
                runs,
                workload,
                out: out.clone(),
                density,
                test_guest,
                firecracker,
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

/// A byte count with an optional k, m or g suffix (runc's --memory), or -1.
fn parse_bytes(s: &str) -> Result<i64, Error> {
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.trim_end_matches('b');
    let (digits, shift) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 10),
        Some('m') => (&lower[..lower.len() - 1], 20),
        Some('g') => (&lower[..lower.len() - 1], 30),
        _ => (lower, 0),
    };
    let n: i64 = digits.parse().map_err(|_| Error::Bytes(s.to_string()))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| Error::Bytes(s.to_string()))
}

/// `update --resources FILE` (- for stdin): an OCI linux.resources object.
fn read_resources(path: &std::path::Path) -> Result<container::bundle::Resources, Error> {
    let fail =
        |e: Box<dyn std::error::Error + Send + Sync>| Error::ResourcesFile(path.to_path_buf(), e);
    let text = if path.as_os_str() == "-" {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut text).map_err(|e| fail(e.into()))?;
        text
    } else {
        std::fs::read(path).map_err(|e| fail(e.into()))?
    };
    let r: oci_spec::runtime::LinuxResources =
        serde_json::from_slice(&text).map_err(|e| fail(e.into()))?;
    Ok(container::bundle::limits(&r))
}
