//! The command line, its documentation and its packaging agree: every long
//! flag of `tun2socks --help` is in the README's flags table and is a key of
//! the config file (and the other way round), the example config lists every
//! key, the man page and completions come from the same definition, and the
//! systemd units pass `systemd-analyze verify`.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// Flags that are not settings (no config key).
const NOT_KEYS: [&str; 3] = ["help", "version", "config"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tun2socks(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tun2socks"))
        .args(args)
        .output()
        .expect("running tun2socks");
    assert!(
        out.status.success(),
        "tun2socks {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `--name` words at the start of a line (after an optional `-x, `).
fn flags_at_line_starts<'a>(lines: impl Iterator<Item = &'a str>) -> BTreeSet<String> {
    lines
        .filter_map(|line| {
            let line = line.trim_start();
            let line = match line.split_once(", ") {
                Some((short, rest)) if short.len() == 2 && short.starts_with('-') => rest,
                _ => line,
            };
            let name = line.strip_prefix("--")?;
            let end = name
                .find(|c: char| !(c.is_ascii_lowercase() || c == '-'))
                .unwrap_or(name.len());
            Some(name[..end].to_owned())
        })
        .filter(|name| !name.is_empty())
        .collect()
}

/// The long flags `tun2socks --help` lists under Options.
fn help_flags() -> BTreeSet<String> {
    let help = tun2socks(&["--help"]);
    let options = help.split("Options:").nth(1).expect("an Options section");
    let options = options.split("\n\n").next().unwrap_or_default();
    flags_at_line_starts(options.lines())
}

/// The flags in the first column of the README's flags table (rows like
/// ``| `--mtu N` | ...`` or ``| `-v`, `--verbose` | ...``).
fn readme_flags() -> BTreeSet<String> {
    let readme = fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let cells = readme
        .lines()
        .filter(|l| l.starts_with("| `-"))
        .filter_map(|l| l.split('|').nth(1))
        .map(|cell| cell.replace('`', ""));
    let cells: Vec<String> = cells.collect();
    flags_at_line_starts(cells.iter().map(String::as_str))
}

#[test]
fn every_help_flag_is_in_the_readme_and_back() {
    let help = help_flags();
    let readme = readme_flags();
    assert!(help.len() > 20, "too few flags parsed from --help: {help:?}");
    let undocumented: Vec<_> = help.difference(&readme).collect();
    let stale: Vec<_> = readme.difference(&help).collect();
    assert!(
        undocumented.is_empty(),
        "flags of --help missing from README's table: {undocumented:?}"
    );
    assert!(
        stale.is_empty(),
        "README's table lists flags --help does not have: {stale:?}"
    );
}

#[test]
fn every_help_flag_is_a_config_key_and_back() {
    let settings: BTreeSet<String> = help_flags()
        .into_iter()
        .filter(|f| !NOT_KEYS.contains(&f.as_str()))
        .collect();
    let keys: BTreeSet<String> = tun2socks::config::keys().into_iter().collect();
    assert_eq!(settings, keys, "the config keys differ from the flags of --help");
}

#[test]
fn the_example_config_lists_every_key_and_is_valid() {
    let path = workspace().join("systemd/config.toml");
    let text = fs::read_to_string(&path).expect("systemd/config.toml");
    // Uncommented, every example line must parse (all but proxy-file, which
    // excludes proxy).
    let uncommented: String = text
        .lines()
        .map(|l| l.strip_prefix("# ").filter(|rest| is_setting(rest)).unwrap_or(l))
        .filter(|l| !l.starts_with("proxy-file"))
        .map(|l| format!("{l}\n"))
        .collect();
    let listed: BTreeSet<String> = text
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .filter(|l| is_setting(l))
        .filter_map(|l| l.split(" = ").next())
        .map(str::to_owned)
        .collect();
    let keys: BTreeSet<String> = tun2socks::config::keys().into_iter().collect();
    assert_eq!(
        listed, keys,
        "systemd/config.toml does not list exactly the config keys"
    );
    let file = tun2socks::config::parse(&path, &uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let matches = tun2socks::cli::command().get_matches_from(["tun2socks"]);
    tun2socks::config::merge(&matches, Some(&file), None).unwrap_or_else(|e| panic!("{e}"));
}

fn is_setting(line: &str) -> bool {
    line.split_once(" = ")
        .is_some_and(|(key, _)| !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
}

#[test]
fn man_page_and_completions_cover_every_flag() {
    let man = tun2socks(&["man"]);
    assert!(man.contains(".TH tun2socks 1"), "{man}");
    let bash = tun2socks(&["completions", "bash"]);
    for flag in help_flags() {
        // roff escapes the dashes.
        assert!(
            man.contains(&format!("\\-\\-{}", flag.replace('-', "\\-"))),
            "--{flag} not in the man page"
        );
        assert!(
            bash.contains(&format!("--{flag}")),
            "--{flag} not in the bash completions"
        );
    }
    for command in ["check-config", "stats", "cleanup", "completions", "man"] {
        assert!(
            man.contains(&command.replace('-', "\\-")),
            "{command} not in the man page"
        );
    }
}

#[test]
fn version_names_the_embedded_ebpf_object() {
    let object = fs::read(env!("TUN2SOCKS_EBPF_OBJ")).expect("the eBPF object");
    let digest = Sha256::digest(&object);
    let id: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let version = tun2socks(&["--version"]);
    assert_eq!(
        version.trim(),
        format!("tun2socks {} (ebpf sha256:{id})", env!("CARGO_PKG_VERSION"))
    );
}

/// `systemd-analyze verify` on both units, with ExecStart pointing at the
/// binary just built (verify checks that it exists).
#[test]
fn systemd_units_verify() {
    let found = Command::new("systemd-analyze").arg("--version").output();
    assert!(
        found.is_ok_and(|o| o.status.success()),
        "systemd-analyze is missing: `apt-get install systemd` (cargo xtask installs it)"
    );
    let dir = std::env::temp_dir().join(format!("t2s-units-{}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    for unit in ["tun2socks.service", "tun2socks@.service"] {
        let text = fs::read_to_string(workspace().join("systemd").join(unit)).expect("unit file");
        assert!(
            text.contains("ExecStart=/usr/local/bin/tun2socks "),
            "{unit}: unexpected ExecStart"
        );
        let text = text.replace("/usr/local/bin/tun2socks", env!("CARGO_BIN_EXE_tun2socks"));
        fs::write(dir.join(unit), text).unwrap();
    }
    // A template is verified through an instance of it.
    for unit in ["tun2socks.service", "tun2socks@lab.service"] {
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.join(unit))
            .output()
            .expect("running systemd-analyze");
        let messages = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && messages.trim().is_empty(),
            "systemd-analyze verify {unit}:\n{messages}"
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}
