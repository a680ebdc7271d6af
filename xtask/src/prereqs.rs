//! Prerequisites: Debian packages, the nightly rust-src component and
//! bpf-linker. What is present is left alone; what is missing is installed
//! with a message saying why.

use std::env;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::section;

/// A Debian package, the command that shows it is there (if any), and why we
/// need it.
struct Package {
    name: &'static str,
    command: Option<&'static str>,
    why: &'static str,
}

const PACKAGES: &[Package] = &[
    Package {
        name: "llvm-22-dev",
        command: None,
        why: "bpf-linker links the eBPF programs with LLVM 22 (rustc's LLVM)",
    },
    Package {
        name: "dante-server",
        command: Some("danted"),
        why: "SOCKS5 server in the test lab",
    },
    Package {
        name: "microsocks",
        command: Some("microsocks"),
        why: "second SOCKS5 server (username/password) in the test lab",
    },
    Package {
        name: "iperf3",
        command: Some("iperf3"),
        why: "throughput demo",
    },
    Package {
        name: "curl",
        command: Some("curl"),
        why: "HTTP client in the lab",
    },
    Package {
        name: "dnsutils",
        command: Some("dig"),
        why: "DNS client in the lab",
    },
    Package {
        name: "dnsmasq-base",
        command: Some("dnsmasq"),
        why: "DNS server in the lab",
    },
    Package {
        name: "iproute2",
        command: Some("ip"),
        why: "namespaces and veths of the lab",
    },
    Package {
        name: "python3",
        command: Some("python3"),
        why: "HTTP server in the lab",
    },
    Package {
        name: "tinyproxy",
        command: Some("tinyproxy"),
        why: "HTTP CONNECT proxy in the lab (tests/e2e/ops.rs)",
    },
    Package {
        name: "systemd",
        command: Some("systemd-analyze"),
        why: "`systemd-analyze verify` of the unit files (tun2socks-user/tests/cli_docs.rs)",
    },
    Package {
        name: "libelf-dev",
        command: None,
        why: "xsk-rs links the vendored libxdp and libbpf against libelf",
    },
    Package {
        name: "m4",
        command: Some("m4"),
        why: "xsk-rs generates libxdp's dispatcher source with m4",
    },
    Package {
        name: "clang-19",
        command: Some("clang-19"),
        why: "xsk-rs compiles libxdp's BPF objects (CLANG in .cargo/config.toml)",
    },
    Package {
        name: "libclang-19-dev",
        command: None,
        why: "xsk-rs generates its bindings with bindgen (LIBCLANG_PATH in .cargo/config.toml)",
    },
    Package {
        name: "iputils-ping",
        command: Some("ping"),
        why: "ping through the XDP classifier (tun2socks-user/tests/xsk.rs)",
    },
    Package {
        name: "nftables",
        command: Some("nft"),
        why: "random packet loss in the AF_XDP flow-affinity test",
    },
];

const BPF_LINKER: &str = "bpf-linker@0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Checks everything and installs what is missing.
pub fn ensure() -> Result<()> {
    section("prerequisites");
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&Package> = PACKAGES.iter().filter(|p| !is_present(p)).collect();
    if missing.is_empty() {
        println!("apt packages: all present");
        return Ok(());
    }
    for p in &missing {
        println!("missing {}: {}", p.name, p.why);
    }
    let names: Vec<&str> = missing.iter().map(|p| p.name).collect();
    if !is_root() {
        bail!(
            "missing packages and not root; install them with: sudo apt-get install -y {}",
            names.join(" ")
        );
    }
    println!("installing with apt-get: {}", names.join(" "));
    run(&mut apt_get(&["update"]))?;
    run(apt_get(&["install", "-y", "--no-install-recommends"]).args(&names))
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        println!("missing nightly toolchain: it builds the eBPF programs; installing");
        run(Command::new("rustup").args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("nightly rust-src: present");
        return Ok(());
    }
    println!("missing nightly rust-src: build-std needs it for bpfel-unknown-none; installing");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> Result<()> {
    if let Some(path) = find_command("bpf-linker") {
        println!("bpf-linker: {}", path.display());
        return Ok(());
    }
    println!("missing bpf-linker: it links the eBPF programs; installing {BPF_LINKER} (a minute or two)");
    let mut cmd = Command::new("cargo");
    cmd.args(["install", BPF_LINKER, "--locked", "--no-default-features"])
        .args(["--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX);
    run(&mut cmd)
}

fn is_present(p: &Package) -> bool {
    match p.command {
        Some(command) => find_command(command).is_some(),
        None => Command::new("dpkg")
            .args(["-s", p.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
    }
}

/// `command -v`: the command on PATH (or in ~/.cargo/bin).
fn find_command(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    let cargo_bin = env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    env::split_paths(&path)
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn apt_get(args: &[&str]) -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
