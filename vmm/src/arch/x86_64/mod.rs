//! x86_64: memory layout and everything the Linux 64-bit boot protocol needs.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod regs;
pub mod state;
pub mod zero_page;
