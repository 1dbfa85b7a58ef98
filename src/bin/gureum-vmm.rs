//! `gureum-vmm boot ...` and `gureum-vmm restore ...`: the VMM alone — the same flags and exit codes as `gureum boot`, in an
//! executable without the container runtime and the benchmarks, so a VM's process maps less
//! code. `gureum boot` runs it when it is installed beside `gureum`.

use std::time::Instant;

use clap::Parser;

fn main() {
    let start = Instant::now();
    let command = gureum::cli::BootCli::parse().command;
    let code = match gureum_vmm::boot::boot(&command.request(), start) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gureum: {}", gureum_vmm::boot::chain(&e));
            1
        }
    };
    std::process::exit(code);
}
