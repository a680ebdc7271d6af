//! Cargo invocations: building the daemon and the full test run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{prereqs, section};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// Cargo's target directory, as `cargo metadata` reports it (honours
/// `CARGO_TARGET_DIR` and config files).
fn target_dir() -> Result<PathBuf> {
    let out = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json = String::from_utf8_lossy(&out.stdout);
    let key = "\"target_directory\":\"";
    let start = json.find(key).context("no target_directory in cargo metadata")? + key.len();
    let end = json[start..].find('"').context("malformed cargo metadata")? + start;
    Ok(PathBuf::from(&json[start..end]))
}

/// Builds the `tun2socks` package (its build script builds the eBPF programs)
/// and returns the daemon binary's path.
pub fn build_daemon(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    section(&format!("building tun2socks ({profile})"));
    let mut cmd = cargo();
    cmd.args(["build", "-p", "tun2socks"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)?;
    let binary = target_dir()?.join(profile).join("tun2socks");
    if !binary.is_file() {
        bail!("the build succeeded but {} is missing", binary.display());
    }
    println!("daemon: {}", binary.display());
    Ok(binary)
}

/// `cargo xtask test`: prerequisites, release build, every test, clippy,
/// rustfmt. All steps after the build run even if one fails; the summary
/// names the failed ones.
pub fn test_all() -> Result<()> {
    prereqs::ensure()?;
    let daemon = build_daemon(true)?;

    let mut tests = cargo();
    tests
        .args(["test", "--release", "--workspace", "--no-fail-fast"])
        .args(["--", "--test-threads=2"])
        .env("TUN2SOCKS_BIN", &daemon);
    // The eBPF crate is its own workspace (nightly); its decision logic
    // (flow hash, XDP classifier) is plain no_std code tested on the host.
    // It builds with its own (nightly) toolchain, so nothing of this stable
    // cargo run may leak into it.
    let mut ebpf_tests = Command::new("rustup");
    ebpf_tests
        .current_dir(workspace_root().join("tun2socks-ebpf"))
        .args([
            "run",
            "nightly",
            "cargo",
            "test",
            "--lib",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .arg("--target-dir")
        .arg(workspace_root().join("target/ebpf-host"));
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
    ] {
        ebpf_tests.env_remove(var);
    }
    let mut clippy = cargo();
    clippy.args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]);
    let mut fmt = cargo();
    fmt.args(["fmt", "--all", "--check"]);

    let steps: [(&str, &mut Command); 4] = [
        ("tests (cargo test --release --workspace)", &mut tests),
        (
            "eBPF crate's host tests (tun2socks-ebpf: cargo test --lib)",
            &mut ebpf_tests,
        ),
        ("clippy (-D warnings)", &mut clippy),
        ("rustfmt (--check)", &mut fmt),
    ];
    let mut failed = Vec::new();
    for (name, cmd) in steps {
        section(name);
        if let Err(e) = run(cmd) {
            eprintln!("{e:#}");
            failed.push(name);
        }
    }
    section("summary");
    if failed.is_empty() {
        println!("all passed");
        Ok(())
    } else {
        bail!("failed: {}", failed.join("; "))
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
