//! `cargo xtask bench --bare --pack DIR`: the three binaries a bare host
//! needs, built in release, with a README.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::PACK_README;
use crate::{cargo, section};

const README: &str = "\
tun2socks scaling benchmark, packed by `cargo xtask bench --bare --pack`.

Run as root on any Linux host (x86_64, glibc, a kernel like the build host's:
TUN, veth, network namespaces, eBPF). Nothing else is needed: no iproute2,
iperf3, dante, curl or Rust. From this directory:

    ./xtask bench --bare --workers 1,2,4,8            # 3 rounds of 5 s runs
    ./xtask bench --bare --workers 1,2,4,8,16 --secs 3 --rounds 3

It creates three network namespaces (t2sb-<pid>-app/-proxy/-srv, under
/run/netns) joined by veths, runs its own SOCKS5 server and load server in
them, measures TCP throughput (1 and N streams, each way) through tun2socks
with each worker count and through the kernel (routed, and the client
speaking SOCKS5 itself), deletes the namespaces again (also on failure and
Ctrl-C), and writes results.json, table.md and logs/ into
./bench-bare-<UTC time>/ (or --out DIR). The binaries beside this README
are used (tun2socks, t2s-load); --daemon and --load-tool override them.
Other options: --rounds, --secs, --streams, --mtu (default 9000).

lib/ holds the shared libraries the daemon links beyond glibc (libelf,
zlib), copied from the build host; xtask gives them to the daemon with
LD_LIBRARY_PATH (the host's own are not used). glibc itself must be at
least as new as the build host's (`GLIBC_2.34` here).

Bring back the whole output directory.
";

/// Shared libraries that every glibc system has: not bundled.
const SYSTEM_LIBS: [&str; 8] = [
    "linux-vdso",
    "ld-linux",
    "libc.so",
    "libm.so",
    "libgcc_s.so",
    "libpthread.so",
    "libdl.so",
    "librt.so",
];

/// Copies the shared libraries `binary` needs beyond glibc (as the build
/// host's `ldd` resolves them) into `lib_dir`; returns their names.
fn bundle_libraries(binary: &Path, lib_dir: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    if !out.status.success() {
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut names = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // `libelf.so.1 => /lib/x86_64-linux-gnu/libelf.so.1 (0x...)`
        let Some((name, rest)) = line.trim().split_once(" => ") else {
            continue;
        };
        if SYSTEM_LIBS.iter().any(|s| name.starts_with(s)) {
            continue;
        }
        let path = rest.split_whitespace().next().unwrap_or("");
        if !path.starts_with('/') {
            bail!("ldd cannot find {name} for {}", binary.display());
        }
        fs::create_dir_all(lib_dir).with_context(|| format!("creating {}", lib_dir.display()))?;
        // fs::copy follows the symlink: the library itself, under its soname.
        fs::copy(path, lib_dir.join(name)).with_context(|| format!("copying {path}"))?;
        names.push(name.to_owned());
    }
    Ok(names)
}

pub fn run(dir: &Path) -> Result<()> {
    let daemon = cargo::build_daemon(true)?;
    let load = super::super::build_load_tool(&daemon)?;
    section("building xtask (release)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .current_dir(cargo::workspace_root())
        .args(["build", "--release", "-p", "xtask"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building xtask failed: {status}");
    }
    let xtask = daemon.with_file_name("xtask");
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (from, name) in [(&xtask, "xtask"), (&daemon, "tun2socks"), (&load, "t2s-load")] {
        let to = dir.join(name);
        // A copy over a running binary would fail: replace it instead.
        let _ = fs::remove_file(&to);
        fs::copy(from, &to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o755))?;
    }
    let libs = bundle_libraries(&daemon, &dir.join("lib"))?;
    fs::write(dir.join(PACK_README), README).context("writing the README")?;
    section(&format!("packed into {}", dir.display()));
    let libs: Vec<String> = libs.iter().map(|l| format!("lib/{l}")).collect();
    let names = ["xtask", "tun2socks", "t2s-load", PACK_README].map(str::to_owned);
    for name in names.iter().chain(&libs) {
        let size = fs::metadata(dir.join(name)).map_or(0, |m| m.len());
        println!("  {name:<24} {:>6.1} MiB", size as f64 / (1 << 20) as f64);
    }
    println!("carry it to the host and run, as root: cd DIR && ./xtask bench --bare --workers 1,2,4,8");
    Ok(())
}
