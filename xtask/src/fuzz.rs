//! `cargo xtask fuzz [--seconds N] [TARGET...]`: runs the cargo-fuzz
//! targets in `fuzz/` (libFuzzer, nightly) for N seconds each, one after the
//! other, and prints each one's executions. Installs cargo-fuzz if missing.
//! Corpora grow in `fuzz/corpus/<target>` (not committed); a crash leaves
//! its input in `fuzz/artifacts/<target>/` and fails the command.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cargo::workspace_root;
use crate::section;

#[derive(clap::Args)]
pub struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Targets to run (default: all of `cargo fuzz list`).
    targets: Vec<String>,
}

/// `rustup run nightly cargo fuzz ARGS...` in `fuzz/`.
fn cargo_fuzz(dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"]).current_dir(dir);
    // Nothing of the outer (stable) cargo run may leak into the nightly one.
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub fn run(options: Options) -> Result<()> {
    let dir = workspace_root().join("fuzz");
    let installed = cargo_fuzz(&dir)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        section("installing cargo-fuzz");
        let status = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .status()
            .context("running cargo install")?;
        if !status.success() {
            bail!("cargo install cargo-fuzz failed ({status})");
        }
    }
    let targets = if options.targets.is_empty() {
        let out = cargo_fuzz(&dir).arg("list").output().context("cargo fuzz list")?;
        if !out.status.success() {
            bail!("cargo fuzz list failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    } else {
        options.targets
    };

    section("building the fuzz targets (nightly, sanitizer instrumentation)");
    let status = cargo_fuzz(&dir)
        .args(["build", "-O"])
        .status()
        .context("cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }

    let mut results = Vec::new();
    let mut failed = Vec::new();
    for target in &targets {
        section(&format!("fuzzing {target} for {} s", options.seconds));
        let corpus = dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let mut cmd = cargo_fuzz(&dir);
        cmd.args(["run", "-O", target]).arg(&corpus);
        let seeds = dir.join("seeds").join(target);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        cmd.args([
            "--",
            &format!("-max_total_time={}", options.seconds),
            "-print_final_stats=1",
        ]);
        let out = cmd.output().with_context(|| format!("cargo fuzz run {target}"))?;
        let log = String::from_utf8_lossy(&out.stderr);
        let execs = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_else(|| "?".into());
        if out.status.success() {
            println!("{target}: ok, {execs} executions");
        } else {
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            println!("{target}: FAILED ({})\n{}", out.status, tail.join("\n"));
            failed.push(target.clone());
        }
        results.push((target.clone(), execs));
    }
    section("fuzz summary");
    for (target, execs) in &results {
        let mark = if failed.contains(target) { "FAILED" } else { "ok" };
        println!("{target:24} {mark:6} {execs} executions in {} s", options.seconds);
    }
    if !failed.is_empty() {
        bail!("fuzz targets failed: {} (inputs in fuzz/artifacts/)", failed.join(", "));
    }
    Ok(())
}
