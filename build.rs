//! Links gureum with packed relative relocations (DT_RELR, glibc ≥ 2.36): a PIE of this size
//! otherwise carries ~320 KiB of RELA entries that the dynamic loader reads in every VMM process.
fn main() {
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    println!("cargo:rerun-if-changed=build.rs");
}
