//! gureum's command line and benchmarks, over its two libraries: `gureum_vmm` (the VMM core)
//! and `gureum_runtime` (containers, native or in a microVM). The `gureum` and `gureum-vmm`
//! executables are thin: `main` is the only place that prints an error and picks the exit code.

pub mod bench;
pub mod cli;
