//! Link flags for the kernel binary only (`rustc-link-arg-bins` does not reach host tests,
//! build scripts or proc-macros; no global rustflags are needed).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    let script = format!("{dir}/linker.ld");
    for arg in [
        "-nostartfiles",
        "-static",
        "-no-pie",
        &format!("-Wl,-T,{script}"),
        "-Wl,--build-id=none",
        "-Wl,-z,norelro",
        "-Wl,-z,noexecstack",
        "-Wl,-z,max-page-size=0x1000",
        "-Wl,--gc-sections",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rerun-if-changed={script}");
    println!("cargo:rerun-if-changed=build.rs");
}
