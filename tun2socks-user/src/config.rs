//! The config file (`--config FILE`, TOML) and how it meets the command line.
//!
//! The file's keys are exactly the daemon's long flags without the dashes
//! (`mtu = 1500`, `route = ["10.0.0.0/8"]`, `no-setup = true`), so there is
//! one schema: the clap definition in `crate::cli`. Each value is checked
//! by the very parser its flag uses, and an error names the file, the line
//! and the key. Flags given on the command line override the file; for
//! repeatable flags the command line's list replaces the file's.
//!
//! The proxy URL is one setting with several sources, first found wins:
//! `--proxy`, `--proxy-file`, `$TUN2SOCKS_PROXY`, then the file's `proxy` or
//! `proxy-file`. Only `--proxy` puts a password where other users can read
//! it (`ps`), so that one is warned about. Proxy URLs from files and the
//! environment are never echoed in errors: the password would end up in
//! logs.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Parser};
use toml::de::{DeTable, DeValue};

use crate::cli::{self, Cli, PROXY_ENV};
use crate::proxy::{ProxyUrl, ProxyUrlError};

/// Long flags that are not settings: they cannot appear in a config file.
const NOT_KEYS: [&str; 3] = ["help", "version", "config"];

/// The command's arguments in `--help` order (`Command::mut_arg` moves an
/// argument to the end of `get_arguments`).
fn arguments(command: &clap::Command) -> Vec<&clap::Arg> {
    let mut args: Vec<&clap::Arg> = command.get_arguments().collect();
    args.sort_by_key(|arg| arg.get_display_order());
    args
}

/// The config file's keys: every long flag of the daemon but `help`,
/// `version` and `config`, in the order `--help` lists them.
pub fn keys() -> Vec<String> {
    arguments(&cli::command())
        .into_iter()
        .filter_map(|arg| arg.get_long())
        .filter(|long| !NOT_KEYS.contains(long))
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The TOML parser's message names the line and column.
    #[error("{}: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error(
        "{}:{line}: unknown key `{key}` (the keys are the long flags of `tun2socks --help` without the dashes)",
        path.display()
    )]
    UnknownKey { path: PathBuf, line: usize, key: String },
    #[error("{}:{line}: `{key}` cannot be set in a config file", path.display())]
    NotASetting { path: PathBuf, line: usize, key: String },
    #[error("{}:{line}: {key}: {message}", path.display())]
    BadValue {
        path: PathBuf,
        line: usize,
        key: String,
        message: String,
    },
    #[error("{}:{line}: give `proxy` or `proxy-file`, not both", path.display())]
    TwoProxies { path: PathBuf, line: usize },
    #[error(
        "no proxy given: use --proxy URL, --proxy-file FILE, the environment variable {PROXY_ENV}, \
         or `proxy` in the config file"
    )]
    NoProxy,
    /// The URL itself is left out on purpose: it may hold a password.
    #[error("the proxy URL from {origin} is invalid: {reason}")]
    BadProxy { origin: String, reason: ProxyUrlError },
    #[error("--metrics {addr} is not a loopback address; add --metrics-allow-remote to serve it there")]
    RemoteMetrics { addr: std::net::SocketAddr },
    #[error("{0}")]
    Invalid(String),
}

/// Where a setting's value came from (shown by `check-config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    CommandLine,
    File { line: usize },
    Environment,
    ProxyFile(PathBuf),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::CommandLine => f.write_str("command line"),
            Source::File { line } => write!(f, "config file line {line}"),
            Source::Environment => write!(f, "${PROXY_ENV}"),
            Source::ProxyFile(path) => write!(f, "proxy file {}", path.display()),
        }
    }
}

/// The daemon's configuration after merging, and how it came about.
#[derive(Debug)]
pub struct Resolved {
    pub cli: Cli,
    /// Per key (long flag name), where its value came from; keys left at
    /// their default (or unset) are absent.
    pub sources: BTreeMap<String, Source>,
    /// Things the user should hear about once logging is up.
    pub warnings: Vec<String>,
    /// The merged arguments the final [`Cli`] was parsed from.
    argv: Vec<OsString>,
}

/// Merges the command line (`matches`, from `cli::parse_from`), the config
/// file it names and the environment into the daemon's configuration.
pub fn resolve(matches: &ArgMatches) -> Result<Resolved, ConfigError> {
    let file = match matches.get_one::<PathBuf>("config") {
        Some(path) => Some(load(path)?),
        None => None,
    };
    let env_proxy = std::env::var(PROXY_ENV).ok().filter(|v| !v.trim().is_empty());
    merge(matches, file.as_ref(), env_proxy.as_deref())
}

/// A parsed config file: per key, its line and its value as arguments.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    entries: BTreeMap<String, Entry>,
    /// Others may read the file (relevant when it holds a password).
    readable_by_others: bool,
}

#[derive(Debug)]
struct Entry {
    line: usize,
    /// The arguments that say the same on a command line (`--mtu 1500`).
    args: Vec<String>,
    /// The single value, for `proxy` and `proxy-file`.
    value: Option<String>,
}

/// Reads and validates a config file.
pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mode = fs::metadata(path).map(|m| m.permissions().mode()).unwrap_or(0);
    let mut file = parse(path, &text)?;
    file.readable_by_others = mode & 0o077 != 0;
    Ok(file)
}

/// Parses config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    let table = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: syntax_message(&e, text),
    })?;
    let command = cli::command();
    let mut entries = BTreeMap::new();
    // In file order, so that the first error reported is the first one there.
    let mut items: Vec<_> = table.get_ref().iter().collect();
    items.sort_by_key(|(key, _)| key.span().start);
    for (key, value) in items {
        let line = line_of(text, key.span().start);
        let name = key.get_ref().as_ref();
        let at = |message: String| ConfigError::BadValue {
            path: path.to_owned(),
            line,
            key: name.to_owned(),
            message,
        };
        if NOT_KEYS.contains(&name) {
            return Err(ConfigError::NotASetting {
                path: path.to_owned(),
                line,
                key: name.to_owned(),
            });
        }
        let arg = command
            .get_arguments()
            .find(|a| a.get_long() == Some(name))
            .ok_or_else(|| ConfigError::UnknownKey {
                path: path.to_owned(),
                line,
                key: name.to_owned(),
            })?;
        let flag = format!("--{name}");
        let args = match arg.get_action() {
            ArgAction::SetTrue => match value.get_ref() {
                DeValue::Boolean(true) => vec![flag],
                DeValue::Boolean(false) => vec![],
                other => return Err(at(format!("expected true or false, found {}", other.type_str()))),
            },
            ArgAction::Count => match value.get_ref() {
                DeValue::Integer(n) => {
                    let n = i64::from_str_radix(n.as_str(), n.radix()).unwrap_or(-1);
                    let n = usize::try_from(n)
                        .ok()
                        .filter(|n| *n <= 3)
                        .ok_or_else(|| at("expected a level from 0 to 3".into()))?;
                    vec![flag; n]
                }
                other => return Err(at(format!("expected a level from 0 to 3, found {}", other.type_str()))),
            },
            ArgAction::Append => {
                let items: Vec<&DeValue> = match value.get_ref() {
                    DeValue::Array(items) => items.iter().map(|i| i.get_ref()).collect(),
                    single => vec![single],
                };
                let mut args = Vec::with_capacity(items.len() * 2);
                for item in items {
                    args.push(flag.clone());
                    args.push(scalar(item).map_err(at)?);
                }
                args
            }
            _ => match value.get_ref() {
                DeValue::Array(_) => return Err(at("takes one value, not an array".into())),
                single => vec![flag, scalar(single).map_err(at)?],
            },
        };
        let single = args.get(1).cloned();
        if name == "proxy" {
            // Checked here, without clap, whose message would quote the URL.
            let url = single.as_deref().unwrap_or_default();
            url.parse::<ProxyUrl>()
                .map_err(|e| at(format!("invalid proxy URL: {e}")))?;
        } else {
            check_with_clap(&args).map_err(at)?;
        }
        let value = matches!(name, "proxy" | "proxy-file").then_some(single).flatten();
        entries.insert(name.to_owned(), Entry { line, args, value });
    }
    if let (Some(_), Some(second)) = (entries.get("proxy"), entries.get("proxy-file")) {
        return Err(ConfigError::TwoProxies {
            path: path.to_owned(),
            line: second.line,
        });
    }
    Ok(ConfigFile {
        path: path.to_owned(),
        entries,
        readable_by_others: false,
    })
}

/// A TOML scalar as the text of a command-line value.
fn scalar(value: &DeValue) -> Result<String, String> {
    match value {
        DeValue::String(s) => Ok(s.to_string()),
        DeValue::Integer(n) => i128::from_str_radix(n.as_str(), n.radix())
            .map(|n| n.to_string())
            .map_err(|_| "integer out of range".to_owned()),
        DeValue::Float(x) => Ok(x.as_str().to_owned()),
        other => Err(format!("expected a string or a number, found {}", other.type_str())),
    }
}

/// Runs one key's arguments through the flag's own parser.
fn check_with_clap(args: &[String]) -> Result<(), String> {
    let argv = std::iter::once("tun2socks").chain(args.iter().map(String::as_str));
    cli::command()
        .try_get_matches_from(argv)
        .map(drop)
        .map_err(|e| clap_message(&e))
}

/// The first line of a clap error, without its `error: ` prefix.
fn clap_message(e: &clap::Error) -> String {
    let rendered = e.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

fn syntax_message(e: &toml::de::Error, text: &str) -> String {
    match e.span() {
        Some(span) => format!("line {}: {}", line_of(text, span.start), e.message()),
        None => e.message().to_owned(),
    }
}

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The merge itself, with the file and the environment given (for tests).
pub fn merge(
    matches: &ArgMatches,
    file: Option<&ConfigFile>,
    env_proxy: Option<&str>,
) -> Result<Resolved, ConfigError> {
    let command = cli::command();
    let mut argv: Vec<OsString> = vec!["tun2socks".into()];
    let mut sources = BTreeMap::new();
    let mut warnings = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version" | "proxy" | "proxy-file") {
            continue;
        }
        let id = arg.get_id().as_str();
        let flag = format!("--{long}");
        if matches.value_source(id) == Some(ValueSource::CommandLine) {
            match arg.get_action() {
                ArgAction::SetTrue => argv.push(flag.into()),
                ArgAction::Count => argv.extend((0..matches.get_count(id)).map(|_| OsString::from(&flag))),
                _ => {
                    for value in matches.get_raw(id).into_iter().flatten() {
                        argv.push(flag.clone().into());
                        argv.push(value.to_owned());
                    }
                }
            }
            sources.insert(long.to_owned(), Source::CommandLine);
        } else if let Some(entry) = file.and_then(|f| f.entries.get(long)) {
            argv.extend(entry.args.iter().map(OsString::from));
            sources.insert(long.to_owned(), Source::File { line: entry.line });
        }
    }
    let (url, source) = proxy(matches, file, env_proxy)?;
    let has_password = url.parse::<ProxyUrl>().is_ok_and(|p| p.credentials.is_some());
    if has_password {
        match &source {
            Source::CommandLine => warnings.push(
                "the proxy password is on the command line, where every local user can read it (ps, \
                 /proc/PID/cmdline); use --proxy-file, $TUN2SOCKS_PROXY or the config file instead"
                    .to_owned(),
            ),
            Source::File { .. } if file.is_some_and(|f| f.readable_by_others) => {
                let path = file.map(|f| f.path.display().to_string()).unwrap_or_default();
                warnings.push(format!(
                    "{path} holds the proxy password and others may read it: chmod 600 {path}"
                ));
            }
            Source::ProxyFile(path) if readable_by_others(path) => warnings.push(format!(
                "{} holds the proxy password and others may read it: chmod 600 {}",
                path.display(),
                path.display()
            )),
            _ => {}
        }
    }
    argv.push("--proxy".into());
    argv.push(url.into());
    sources.insert("proxy".to_owned(), source);

    let cli = Cli::try_parse_from(&argv).map_err(|e| ConfigError::Invalid(clap_message(&e)))?;
    check(&cli)?;
    Ok(Resolved {
        cli,
        sources,
        warnings,
        argv,
    })
}

/// The proxy URL and where it came from: the first of `--proxy`,
/// `--proxy-file`, the environment, the file's `proxy` or `proxy-file`.
fn proxy(
    matches: &ArgMatches,
    file: Option<&ConfigFile>,
    env_proxy: Option<&str>,
) -> Result<(String, Source), ConfigError> {
    let from_cli = |id: &str| (matches.value_source(id) == Some(ValueSource::CommandLine)).then_some(());
    if from_cli("proxy").is_some()
        && let Some(url) = matches.get_raw("proxy").and_then(|mut v| v.next())
    {
        // clap has parsed it already.
        return Ok((url.to_string_lossy().into_owned(), Source::CommandLine));
    }
    if from_cli("proxy_file").is_some()
        && let Some(path) = matches.get_one::<PathBuf>("proxy_file")
    {
        return read_proxy_file(path);
    }
    if let Some(url) = env_proxy {
        let url = url.trim().to_owned();
        validate_proxy(&url, &format!("${PROXY_ENV}"))?;
        return Ok((url, Source::Environment));
    }
    if let Some(file) = file {
        if let Some(Entry {
            line, value: Some(url), ..
        }) = file.entries.get("proxy")
        {
            return Ok((url.clone(), Source::File { line: *line }));
        }
        if let Some(Entry { value: Some(path), .. }) = file.entries.get("proxy-file") {
            return read_proxy_file(Path::new(path));
        }
    }
    Err(ConfigError::NoProxy)
}

fn read_proxy_file(path: &Path) -> Result<(String, Source), ConfigError> {
    let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let url = text.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default();
    validate_proxy(url, &path.display().to_string())?;
    Ok((url.to_owned(), Source::ProxyFile(path.to_owned())))
}

fn validate_proxy(url: &str, origin: &str) -> Result<(), ConfigError> {
    url.parse::<ProxyUrl>()
        .map(drop)
        .map_err(|reason| ConfigError::BadProxy {
            origin: origin.to_owned(),
            reason,
        })
}

fn readable_by_others(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
}

/// Checks across settings that clap does not express.
fn check(cli: &Cli) -> Result<(), ConfigError> {
    if let Some(addr) = cli.metrics
        && !addr.ip().is_loopback()
        && !cli.metrics_allow_remote
    {
        return Err(ConfigError::RemoteMetrics { addr });
    }
    Ok(())
}

impl Resolved {
    /// The effective configuration as a config file (what `check-config`
    /// prints): every key with its value, where it came from, and the
    /// proxy password masked.
    pub fn render(&self) -> String {
        let command = cli::command();
        let matches = command
            .clone()
            .try_get_matches_from(&self.argv)
            .expect("the merged arguments parsed once already");
        let mut out = String::from("# effective tun2socks configuration (proxy password masked)\n");
        for arg in arguments(&command) {
            let Some(long) = arg.get_long() else { continue };
            if NOT_KEYS.contains(&long) || long == "proxy-file" {
                continue;
            }
            let id = arg.get_id().as_str();
            let value = if long == "proxy" {
                Some(toml_string(&self.cli.proxy.redacted()))
            } else {
                match arg.get_action() {
                    ArgAction::SetTrue => Some(matches.get_flag(id).to_string()),
                    ArgAction::Count => Some(matches.get_count(id).to_string()),
                    action => {
                        let values: Vec<String> = matches
                            .get_raw(id)
                            .into_iter()
                            .flatten()
                            .map(|v| toml_scalar(&v.to_string_lossy()))
                            .collect();
                        match (action, values.is_empty()) {
                            (ArgAction::Append, _) => Some(format!("[{}]", values.join(", "))),
                            (_, true) => None,
                            (_, false) => Some(values.join(", ")),
                        }
                    }
                }
            };
            let source = self.sources.get(long).cloned().unwrap_or(Source::Default);
            let _ = match value {
                Some(value) => writeln!(out, "{long} = {value}  # {source}"),
                None => writeln!(out, "# {long}: not set"),
            };
        }
        out
    }
}

/// A value as TOML: numbers bare, everything else a quoted string.
fn toml_scalar(value: &str) -> String {
    let number =
        value.parse::<i64>().is_ok() || (value.parse::<f64>().is_ok_and(f64::is_finite) && value.contains('.'));
    if number && !value.starts_with('+') {
        value.to_owned()
    } else {
        toml_string(value)
    }
}

fn toml_string(value: &str) -> String {
    // A JSON string is a valid TOML basic string.
    serde_json::to_string(value).expect("strings serialize")
}

/// `tun2socks check-config FILE`: the effective configuration of
/// `tun2socks --config FILE` (environment included).
pub fn check_config(path: &Path) -> Result<Resolved, ConfigError> {
    let argv: [OsString; 3] = ["tun2socks".into(), "--config".into(), path.into()];
    let matches = cli::command()
        .try_get_matches_from(argv)
        .map_err(|e| ConfigError::Invalid(clap_message(&e)))?;
    resolve(&matches)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(args: &[&str]) -> ArgMatches {
        cli::command()
            .try_get_matches_from(std::iter::once("tun2socks").chain(args.iter().copied()))
            .unwrap()
    }

    fn file(text: &str) -> Result<ConfigFile, ConfigError> {
        parse(Path::new("t.toml"), text)
    }

    const FILE: &str = r#"
proxy = "socks5://alice:secret@10.0.1.2:1080"
mtu = 1500
route = ["10.0.0.0/8", "fd00::/16"]
fwmark = 0x100
no-setup = true
connect-timeout = 2.5
"#;

    #[test]
    fn the_file_fills_in_and_flags_override() {
        let f = file(FILE).unwrap();
        let r = merge(
            &matches(&["--mtu", "1400", "--route", "192.168.0.0/16"]),
            Some(&f),
            None,
        )
        .unwrap();
        assert_eq!(r.cli.mtu, 1400);
        assert_eq!(r.cli.routes, vec!["192.168.0.0/16".parse::<ipnet::IpNet>().unwrap()]);
        assert_eq!(r.cli.fwmark, 0x100);
        assert!(r.cli.no_setup);
        assert_eq!(r.cli.connect_timeout, 2.5);
        assert_eq!(r.cli.proxy.credentials.as_ref().unwrap().password, "secret");
        assert_eq!(r.sources["mtu"], Source::CommandLine);
        assert_eq!(r.sources["fwmark"], Source::File { line: 5 });
        assert!(!r.sources.contains_key("workers"));
        // From the file only.
        let r = merge(&matches(&[]), Some(&f), None).unwrap();
        assert_eq!((r.cli.mtu, r.cli.routes.len()), (1500, 2));
    }

    #[test]
    fn proxy_sources_in_order() {
        let f = file(FILE).unwrap();
        let env = Some("http://10.9.9.9:3128");
        let r = merge(&matches(&["--proxy", "direct://"]), Some(&f), env).unwrap();
        assert_eq!(
            (r.cli.proxy.kind.scheme(), &r.sources["proxy"]),
            ("direct", &Source::CommandLine)
        );
        let r = merge(&matches(&[]), Some(&f), env).unwrap();
        assert_eq!(
            (r.cli.proxy.host.as_str(), &r.sources["proxy"]),
            ("10.9.9.9", &Source::Environment)
        );
        let r = merge(&matches(&[]), Some(&f), None).unwrap();
        assert_eq!(r.sources["proxy"], Source::File { line: 2 });
        assert!(matches!(merge(&matches(&[]), None, None), Err(ConfigError::NoProxy)));
    }

    #[test]
    fn a_password_in_argv_is_warned_about() {
        let r = merge(&matches(&["--proxy", "socks5://u:p@10.0.1.2:1080"]), None, None).unwrap();
        assert!(
            r.warnings.iter().any(|w| w.contains("command line")),
            "{:?}",
            r.warnings
        );
        let r = merge(&matches(&[]), None, Some("socks5://u:p@10.0.1.2:1080")).unwrap();
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn unknown_keys_name_key_and_line() {
        let e = file("mtu = 1500\n\nmtuu = 1400\n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::UnknownKey { line: 3, key, .. } if key == "mtuu"),
            "{e}"
        );
        assert!(e.to_string().starts_with("t.toml:3: unknown key `mtuu`"), "{e}");
        let e = file("[section]\nmtu = 1500\n").unwrap_err();
        assert!(e.to_string().contains("t.toml:1: unknown key `section`"), "{e}");
        let e = file("config = \"other.toml\"\n").unwrap_err();
        assert!(matches!(e, ConfigError::NotASetting { line: 1, .. }), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let cases = [
            ("# c\nmtu = 100\n", 2, "mtu", "1280"),
            ("mtu = \"abc\"\n", 1, "mtu", "abc"),
            ("route = [\"10.0.0.0/33\"]\n", 1, "route", "10.0.0.0/33"),
            ("mtu = [1500]\n", 1, "mtu", "not an array"),
            ("no-setup = \"yes\"\n", 1, "no-setup", "true or false"),
            ("workers = true\n", 1, "workers", "string or a number"),
            ("\n\ndns = \"tls\"\n", 3, "dns", "tls"),
            ("proxy = \"socks5://alice:secret@host\"\n", 1, "proxy", "port"),
        ];
        for (text, want_line, want_key, mention) in cases {
            let e = file(text).unwrap_err();
            let ConfigError::BadValue { line, key, message, .. } = &e else {
                panic!("{text:?}: {e}");
            };
            assert_eq!((*line, key.as_str()), (want_line, want_key), "{text:?}: {e}");
            assert!(message.contains(mention), "{text:?}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
        let e = file("mtu = \n").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Syntax { message, .. } if message.starts_with("line 1")),
            "{e}"
        );
        let e = file("mtu = 1500\nmtu = 1400\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }

    #[test]
    fn check_config_masks_the_password_and_reads_back() {
        let f = file(FILE).unwrap();
        let r = merge(&matches(&["--workers", "3"]), Some(&f), None).unwrap();
        let text = r.render();
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("proxy = \"socks5://alice:***@10.0.1.2:1080\""), "{text}");
        assert!(text.contains("workers = 3  # command line"), "{text}");
        assert!(text.contains("mtu = 1500  # config file line 3"), "{text}");
        assert!(text.contains("route = [\"10.0.0.0/8\", \"fd00::/16\"]"), "{text}");
        assert!(text.contains("device = \"auto\"  # default"), "{text}");
        assert!(text.contains("# netns: not set"), "{text}");
        // Every key is listed, and the output is a valid config itself
        // once the masked password is replaced.
        for key in keys().iter().filter(|k| *k != "proxy-file") {
            assert!(
                text.contains(&format!("{key} =")) || text.contains(&format!("# {key}: not set")),
                "{key}"
            );
        }
        let again = file(&text.replace("alice:***@", "")).unwrap();
        let r2 = merge(&matches(&[]), Some(&again), None).unwrap();
        assert_eq!((r2.cli.mtu, r2.cli.workers, r2.cli.fwmark), (1500, Some(3), 0x100));
    }

    #[test]
    fn remote_metrics_need_consent() {
        let base = ["--proxy", "direct://", "--metrics"];
        let e = merge(&matches(&[&base[..], &["10.0.0.1:9464"]].concat()), None, None).unwrap_err();
        assert!(matches!(e, ConfigError::RemoteMetrics { .. }), "{e}");
        let ok = [&base[..], &["0.0.0.0:9464", "--metrics-allow-remote"]].concat();
        assert!(merge(&matches(&ok), None, None).is_ok());
        assert!(merge(&matches(&[&base[..], &["[::1]:9464"]].concat()), None, None).is_ok());
    }

    #[test]
    fn keys_are_the_long_flags() {
        let keys = keys();
        for want in ["proxy", "proxy-file", "route", "no-setup", "metrics", "verbose", "mtu"] {
            assert!(keys.iter().any(|k| k == want), "{want} missing from {keys:?}");
        }
        assert!(!keys.iter().any(|k| NOT_KEYS.contains(&k.as_str())));
    }
}
