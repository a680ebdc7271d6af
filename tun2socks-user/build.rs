//! Builds the eBPF programs (`tun2socks-ebpf`, a separate nightly workspace)
//! and hands the object to the crate as `TUN2SOCKS_EBPF_OBJ`, for
//! `aya::include_bytes_aligned!`. Like aya-build, but without its
//! dependencies: one nightly cargo run, rebuilt whenever the eBPF sources
//! change, so the embedded object can never be stale.

use std::env;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TOOLCHAIN: &str = "nightly";
const EBPF_TARGET: &str = "bpfel-unknown-none";
/// The eBPF crate's binary, i.e. the object file cargo links.
const EBPF_BIN: &str = "tun2socks-ebpf";
const INSTALL_HINT: &str = "`cargo xtask build` installs what is missing; by hand: \
     `rustup toolchain install nightly --component rust-src` and \
     `apt-get install -y llvm-22-dev && LLVM_PREFIX=/usr/lib/llvm-22 cargo install \
     bpf-linker@0.13.0 --locked --no-default-features --features llvm-22`";

/// Why the eBPF object could not be built.
enum Failure {
    /// A tool or setup problem, said in one line.
    Setup(String),
    /// The build itself failed; the compiler's diagnostics follow the summary.
    Build { summary: String, diagnostics: String },
}

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.parent().expect("tun2socks-user lives in the workspace");
    let ebpf_dir = workspace.join("tun2socks-ebpf");
    watch(&ebpf_dir);

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    match build(&ebpf_dir, &workspace.join("target").join("bpf"), &out_dir) {
        Ok(object) => println!("cargo::rustc-env=TUN2SOCKS_EBPF_OBJ={}", object.display()),
        // cargo prints a `cargo::error` line as a plain one-line error,
        // without dumping the build script's output around it.
        Err(Failure::Setup(message)) => println!("cargo::error={message}"),
        // Compiler diagnostics are many lines: exiting with an error makes
        // cargo show them (this script's stderr) as they are.
        Err(Failure::Build { summary, diagnostics }) => {
            println!("cargo::error={summary}");
            eprintln!("{diagnostics}");
            std::process::exit(1);
        }
    }
}

/// Reruns this script when anything that goes into the object changes.
fn watch(ebpf_dir: &Path) {
    for path in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "rust-toolchain.toml",
        ".cargo/config.toml",
    ] {
        println!("cargo::rerun-if-changed={}", ebpf_dir.join(path).display());
    }
}

/// Builds the object in `target_dir` and copies it into `out_dir`, so that
/// this crate embeds a file no concurrent eBPF build can rewrite under it.
fn build(ebpf_dir: &Path, target_dir: &Path, out_dir: &Path) -> Result<PathBuf, Failure> {
    check_tools()?;
    let output = nightly("cargo")
        .current_dir(ebpf_dir)
        .args(["build", "--release", "--bin", EBPF_BIN, "--target", EBPF_TARGET])
        .args(["-Z", "build-std=core", "--target-dir"])
        .arg(target_dir)
        .output()
        .map_err(|e| Failure::Setup(format!("cannot run `rustup run {TOOLCHAIN} cargo`: {e}")))?;
    if !output.status.success() {
        return Err(Failure::Build {
            summary: format!(
                "building the eBPF programs in {} failed (compiler output below)",
                ebpf_dir.display()
            ),
            diagnostics: compiler_messages(&output),
        });
    }
    if String::from_utf8_lossy(&output.stderr).contains("warning") {
        println!(
            "cargo::warning=the eBPF crate has compiler warnings; see them with `cargo build \
             --release --target {EBPF_TARGET} -Z build-std=core` in tun2socks-ebpf"
        );
    }
    let built = target_dir.join(EBPF_TARGET).join("release").join(EBPF_BIN);
    let object = out_dir.join("tun2socks-ebpf.o");
    fs::copy(&built, &object).map_err(|e| {
        let (from, to) = (built.display(), object.display());
        Failure::Setup(format!("cannot copy {from} to {to}: {e}"))
    })?;
    Ok(object)
}

/// Fails with one message naming what to install, rather than letting
/// cargo or rustc fail with a wall of output.
fn check_tools() -> Result<(), Failure> {
    let missing = |what: &str| Failure::Setup(format!("building the eBPF programs needs {what}; {INSTALL_HINT}"));
    let sysroot = run(nightly("rustc").args(["--print", "sysroot"]))
        .ok_or_else(|| missing("rustup and the nightly toolchain"))?;
    let rust_src = Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core");
    if !rust_src.is_dir() {
        return Err(missing("the nightly rust-src component"));
    }
    // Looked up the way rustc will, with the toolchain's PATH.
    run(nightly("bpf-linker").arg("--version")).ok_or_else(|| missing("bpf-linker"))?;
    Ok(())
}

/// A command of the nightly toolchain, in an environment with nothing of
/// the outer (stable) cargo run left in it: its toolchain, compiler,
/// wrappers (clippy), flags, target dir and jobserver would otherwise leak
/// into the eBPF build.
fn nightly(tool: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, tool]);
    for (name, _) in env::vars_os() {
        if leaks_from_outer_build(&name) {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn leaks_from_outer_build(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    // The user's own cargo and rustup settings (home, registries, network,
    // terminal) still apply to the inner build.
    const KEEP: [&str; 8] = [
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
        "RUSTUP_HOME",
        "RUSTUP_DIST_",
    ];
    const BUILD_SCRIPT_VARS: [&str; 9] = [
        "TARGET",
        "HOST",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "MAKEFLAGS",
        "MFLAGS",
    ];
    if KEEP.iter().any(|keep| name.starts_with(keep)) {
        return false;
    }
    // CARGO_* covers CARGO_TARGET_DIR, CARGO_ENCODED_RUSTFLAGS, CARGO_MAKEFLAGS,
    // CARGO_BUILD_*, CARGO_CFG_*...; RUST* covers RUSTC, RUSTC_WRAPPER,
    // RUSTC_WORKSPACE_WRAPPER, RUSTFLAGS, RUSTDOC*, RUSTUP_TOOLCHAIN.
    name.starts_with("CARGO") || name.starts_with("RUST") || BUILD_SCRIPT_VARS.contains(&name)
}

/// Runs a quiet probe; its stdout if it succeeded.
fn run(cmd: &mut Command) -> Option<String> {
    let output = cmd.output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The compiler's diagnostics from a failed build, without cargo's progress
/// lines.
fn compiler_messages(output: &Output) -> String {
    const PROGRESS: [&str; 7] = [
        "Compiling",
        "Updating",
        "Locking",
        "Downloading",
        "Downloaded",
        "Blocking",
        "Adding",
    ];
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| !PROGRESS.iter().any(|p| line.trim_start().starts_with(p)))
        .collect::<Vec<_>>()
        .join("\n")
}
