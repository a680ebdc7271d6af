//! The crash-recovery journal against a real kernel. Needs root.
//!
//! As in tests/setup.rs, every test runs on its own thread inside a fresh
//! network namespace, so the namespace the tests were started in is never
//! touched. Crashes are real: a child process (this test binary, running
//! only [`crash_child`]) applies the plan with a journal and is killed
//! with SIGKILL; it inherits the namespace of the thread that spawns it.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tun2socks::device::tun::open_queues;
use tun2socks::journal::{self, Journal, JournalError, JournalRecord};
use tun2socks::setup::{self, Change, ExistingDevice, Recorder, RouteKind, RouteSpec, RuleSpec, VethSpec};

mod common;
use common::*;

const TUN: &str = "t2sjrn0";
/// What the full plan changes on a fresh device: MTU, 2 addresses, link
/// up, 6 routes (3 per family) and 6 rules.
const ALL_CHANGES: usize = 16;

// ---------------------------------------------------------------------------
// Scenery (the same approach as tests/setup.rs)

/// [`snapshot`] once it stopped changing: a device that just went up gets
/// its IPv6 link-local address and routes from kernel work queues.
fn settled_snapshot() -> String {
    let mut last = snapshot();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let now = snapshot();
        if now == last {
            return now;
        }
        last = now;
    }
    panic!("state still changing after 3s:\n{last}");
}

/// A persistent multi-queue TUN made by iproute2, as an admin would, with
/// the one-time effects of its first "up" done (see tests/setup.rs; the
/// switch to `addrgenmode random` waits for a carrier, i.e. an open queue).
fn adopted_tun() {
    ip(&format!("tuntap add mode tun multi_queue name {TUN}"));
    let queue = open_queues(TUN, 1, false).unwrap();
    ip(&format!("link set {TUN} up"));
    ip(&format!("link set {TUN} down"));
    drop(queue);
}

/// A journal directory of its own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("t2s-journal-test-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    /// The journal files in it (temporary files excluded).
    fn journals(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.0)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The journal file name of device `device` in the calling thread's namespace.
fn journal_path(dir: &Path, device: &str) -> PathBuf {
    dir.join(format!("{}-{device}.json", netns_inode("/proc/thread-self/ns/net")))
}

/// A pid no process has any more: a child that has exited and was reaped.
fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// Rewrites the journal at `path` through `edit`, as a test's stand-in for
/// what the world did to it (an owner that died, another boot).
fn edit_journal(path: &Path, edit: impl FnOnce(&mut JournalRecord)) {
    let mut record = JournalRecord::read(path).unwrap();
    edit(&mut record);
    std::fs::write(path, serde_json::to_vec(&record).unwrap()).unwrap();
}

// ---------------------------------------------------------------------------
// The crashing child

const CHILD_DIR: &str = "T2S_JOURNAL_TEST_DIR";
const CHILD_NETNS: &str = "T2S_JOURNAL_TEST_NETNS";
/// The namespace the tests were started in, which the child must not be in.
const CHILD_HOST_NETNS: &str = "T2S_JOURNAL_TEST_HOST_NETNS";
const CHILD_STOP_AFTER: &str = "T2S_JOURNAL_TEST_STOP_AFTER";
/// Host mode: the child creates a veth pair [`VETH`] (journaled) instead
/// of opening a TUN device.
const CHILD_VETH: &str = "T2S_JOURNAL_TEST_VETH";
/// With [`CHILD_VETH`]: freeze once the pair exists, before its index is
/// recorded.
const CHILD_STOP_AT_DEVICE: &str = "T2S_JOURNAL_TEST_STOP_AT_DEVICE";
const VETH: &str = "t2sjrv0";
/// The file the child creates when it is ready to be killed.
const READY: &str = "child-ready";

/// Not a test of its own: the body of the child process that
/// [`spawn_crashing_child`] starts (a no-op in a normal test run). It opens
/// the device, creates a journal and applies the full plan with it; with
/// `T2S_JOURNAL_TEST_STOP_AFTER=N` it stops right after recording the N-th
/// change, before making it. Then it signals readiness and waits to be
/// killed, holding its queues and never undoing anything.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else { return };
    let dir = PathBuf::from(dir);
    // Never touch the namespace the tests were started in.
    let netns: u64 = std::env::var(CHILD_NETNS).unwrap().parse().unwrap();
    assert_eq!(
        netns_inode("/proc/thread-self/ns/net"),
        netns,
        "child in the wrong namespace"
    );
    let host: u64 = std::env::var(CHILD_HOST_NETNS).unwrap().parse().unwrap();
    assert_ne!(host, netns, "child in the namespace the tests were started in");
    let stop_after: Option<usize> = std::env::var(CHILD_STOP_AFTER).ok().map(|n| n.parse().unwrap());
    let veth = std::env::var_os(CHILD_VETH).is_some();
    let stop_at_device = std::env::var_os(CHILD_STOP_AT_DEVICE).is_some();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if veth {
        return runtime.block_on(async {
            let mut journal = Journal::create(&dir, VETH, true).unwrap();
            let mut recorder = StopAfter {
                journal: &mut journal,
                stop_after,
                stop_at_device,
                ready: dir.join(READY),
            };
            let spec = VethSpec {
                name: VETH.to_string(),
                peer: format!("{VETH}x"),
                queues: 2,
                mtu: 1400,
                mac: [2, 0, 0, 0, 0, 1],
                peer_mac: [2, 0, 0, 0, 0, 2],
            };
            let created = setup::veth::create(&spec, &mut recorder).await.unwrap();
            let applied = setup::apply_with(&full_plan(VETH), &mut recorder).await.unwrap();
            std::mem::forget((created, applied));
            ready_and_wait(&dir.join(READY));
        });
    }
    runtime.block_on(async {
        let created = setup::inspect_device(TUN).await.unwrap() == ExistingDevice::Absent;
        let queues = open_queues(TUN, 2, false).unwrap();
        let mut journal = Journal::create(&dir, TUN, created).unwrap();
        let mut recorder = StopAfter {
            journal: &mut journal,
            stop_after,
            stop_at_device: false,
            ready: dir.join(READY),
        };
        let applied = setup::apply_with(&full_plan(TUN), &mut recorder).await.unwrap();
        std::mem::forget(applied);
        std::mem::forget(queues);
        ready_and_wait(&dir.join(READY));
    });
}

fn ready_and_wait(ready: &Path) -> ! {
    std::fs::write(ready, b"").unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// Journals, and freezes after recording the `stop_after`-th change.
struct StopAfter<'a> {
    journal: &'a mut Journal,
    stop_after: Option<usize>,
    /// Freeze when told the device's index, before recording it.
    stop_at_device: bool,
    ready: PathBuf,
}

impl Recorder for StopAfter<'_> {
    type Error = JournalError;

    fn device(&mut self, name: &str, ifindex: u32) -> Result<(), JournalError> {
        if self.stop_at_device {
            ready_and_wait(&self.ready);
        }
        self.journal.device(name, ifindex)
    }

    fn before(&mut self, change: &Change) -> Result<(), JournalError> {
        self.journal.before(change)?;
        if self.stop_after == Some(self.journal.contents().changes.len()) {
            ready_and_wait(&self.ready);
        }
        Ok(())
    }

    fn not_made(&mut self, change: &Change) -> Result<(), JournalError> {
        self.journal.not_made(change)
    }
}

/// Starts [`crash_child`] in the calling thread's namespace and waits until
/// it is ready to be killed.
fn spawn_crashing_child(dir: &Path, stop_after: Option<usize>) -> Child {
    spawn_crashing_child_with(dir, stop_after, &[])
}

/// [`spawn_crashing_child`] with extra environment variables.
fn spawn_crashing_child_with(dir: &Path, stop_after: Option<usize>, env: &[&str]) -> Child {
    let mut command = Command::new(std::env::current_exe().unwrap());
    for var in env {
        command.env(var, "1");
    }
    command
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_NETNS, netns_inode("/proc/thread-self/ns/net").to_string())
        .env(CHILD_HOST_NETNS, netns_inode("/proc/self/ns/net").to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(n) = stop_after {
        command.env(CHILD_STOP_AFTER, n.to_string());
    }
    let mut child = command.spawn().unwrap();
    let ready = dir.join(READY);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready.exists() {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "crash child exited early ({status}): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(Instant::now() < deadline, "crash child not ready after 20s");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::remove_file(&ready).unwrap();
    child
}

/// kill -9, and reap it: from now on its pid is not a running process.
fn kill_9(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

// ---------------------------------------------------------------------------
// Tests

/// Records every change it is told about, reading the journal back after
/// each update: the file always lists exactly what was recorded so far.
struct CheckedJournal<'a> {
    journal: &'a mut Journal,
    expected: Vec<Change>,
}

impl CheckedJournal<'_> {
    fn check(&self) {
        let on_disk = JournalRecord::read(self.journal.path()).unwrap();
        assert_eq!(on_disk.changes, self.expected);
        assert_eq!(&on_disk, self.journal.contents());
    }
}

impl Recorder for CheckedJournal<'_> {
    type Error = JournalError;

    fn device(&mut self, name: &str, ifindex: u32) -> Result<(), JournalError> {
        self.journal.device(name, ifindex)?;
        assert_eq!(JournalRecord::read(self.journal.path()).unwrap().ifindex, Some(ifindex));
        Ok(())
    }

    fn before(&mut self, change: &Change) -> Result<(), JournalError> {
        self.journal.before(change)?;
        self.expected.push(change.clone());
        self.check();
        Ok(())
    }

    fn not_made(&mut self, change: &Change) -> Result<(), JournalError> {
        self.journal.not_made(change)?;
        assert_eq!(
            self.expected.pop().as_ref(),
            Some(change),
            "not_made of the last change"
        );
        self.check();
        Ok(())
    }
}

#[test]
fn the_journal_lists_the_changes_in_order_and_is_always_a_complete_document() {
    in_private_netns(|| async {
        lan();
        adopted_tun();
        // The adopted device's owner already put one of our addresses on it:
        // not ours, so it must not end up in the journal.
        ip(&format!("addr add 198.18.0.1/30 dev {TUN}"));
        let dir = TempDir::new();
        let path = journal_path(&dir.0, TUN);

        // A reader hammering the file meanwhile sees either no file or a
        // complete, valid journal: never a partial write.
        let stop = Arc::new(AtomicBool::new(false));
        let reader = std::thread::spawn({
            let (stop, path) = (stop.clone(), path.clone());
            move || {
                let mut complete = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    match JournalRecord::read(&path) {
                        Ok(_) => complete += 1,
                        Err(JournalError::Read { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                        Err(err) => panic!("reader saw an incomplete journal: {err}"),
                    }
                }
                complete
            }
        });

        let queues = open_queues(TUN, 2, false).unwrap();
        let mut journal = Journal::create(&dir.0, TUN, false).unwrap();
        assert_eq!(journal.path(), path);
        let mut checked = CheckedJournal {
            journal: &mut journal,
            expected: Vec::new(),
        };
        let applied = setup::apply_with(&full_plan(TUN), &mut checked).await.unwrap();
        let record = JournalRecord::read(&path).unwrap();
        assert_eq!(record.changes, applied.changes(), "journal and apply agree");
        assert_eq!(record.ifindex, Some(applied.ifindex()));
        assert_eq!(record.device, TUN);
        assert!(!record.created_device);
        assert_eq!(record.owner.pid, std::process::id());
        assert!(!record.changes.contains(&Change::Address {
            net: "198.18.0.1/30".parse().unwrap()
        }));
        // In apply's order: MTU, addresses, link, routes, then rules.
        let kinds: Vec<&str> = record
            .changes
            .iter()
            .map(|c| match c {
                Change::Mtu { .. } => "mtu",
                Change::Address { .. } => "address",
                Change::LinkUp => "up",
                Change::Route(_) => "route",
                Change::Rule(_) => "rule",
                Change::Veth { .. } => "veth",
            })
            .collect();
        let mut expected = vec!["mtu", "address", "up"];
        expected.extend(["route"; 6]);
        expected.extend(["rule"; 6]);
        assert_eq!(kinds, expected);

        applied.undo().await.unwrap();
        journal.finish().unwrap();
        assert!(
            dir.journals().is_empty(),
            "finish removes the journal: {:?}",
            dir.journals()
        );
        stop.store(true, Ordering::Relaxed);
        let complete = reader.join().unwrap();
        assert!(complete > 0, "the reader never saw the journal");
        drop(queues);
    });
}

#[test]
fn a_crash_with_a_created_device_is_rolled_back() {
    in_private_netns(|| async {
        lan();
        let dir = TempDir::new();
        let before = snapshot();
        let child = spawn_crashing_child(&dir.0, None);
        assert_ne!(snapshot(), before);
        kill_9(child);
        wait_until_absent(TUN).await;
        // The device took its addresses and routes along, but not the rules.
        assert!(ip("rule").contains("lookup 100"));

        let report = journal::recover(&dir.0, None).await.unwrap();
        assert_eq!(report.rolled_back.len(), 1, "{report}");
        assert_eq!(report.rolled_back[0].changes, ALL_CHANGES, "{report}");
        assert_same(&before, &snapshot());
        assert!(dir.journals().is_empty());
    });
}

/// Host mode: a veth pair does not vanish with its creator; recovery
/// deletes it, after the routes and rules, whether the crash came after
/// the whole setup, before the pair was made, or after it was made but
/// before its index was recorded.
#[test]
fn a_crash_with_a_created_veth_pair_is_rolled_back() {
    for (stop_after, env, what) in [
        (None, &[CHILD_VETH][..], "after the whole setup"),
        (Some(1), &[CHILD_VETH][..], "before the pair was made"),
        (
            None,
            &[CHILD_VETH, CHILD_STOP_AT_DEVICE][..],
            "before its index was recorded",
        ),
    ] {
        in_private_netns(move || async move {
            lan();
            let dir = TempDir::new();
            let before = snapshot();
            let child = spawn_crashing_child_with(&dir.0, stop_after, env);
            if stop_after.is_none() {
                assert!(ip("-o link show").contains(VETH), "{what}: no veth pair");
            }
            kill_9(child);
            let record = JournalRecord::read(&dir.journals()[0]).unwrap();
            assert_eq!(
                record.changes.first(),
                Some(&Change::Veth {
                    peer: format!("{VETH}x")
                }),
                "{what}"
            );
            let report = journal::recover(&dir.0, None).await.unwrap();
            assert_eq!(report.rolled_back.len(), 1, "{what}: {report}");
            assert_same(&before, &snapshot());
            assert!(dir.journals().is_empty(), "{what}");
        });
    }
}

#[test]
fn a_crash_with_an_adopted_device_is_rolled_back() {
    in_private_netns(|| async {
        lan();
        adopted_tun();
        ip(&format!("addr add 198.18.0.1/30 dev {TUN}"));
        let dir = TempDir::new();
        let before = snapshot();
        let child = spawn_crashing_child(&dir.0, None);
        kill_9(child);
        // The persistent device keeps everything we did to it.
        assert_ne!(snapshot(), before);

        let report = journal::cleanup(&dir.0).await.unwrap();
        assert_eq!(report.rolled_back.len(), 1, "{report}");
        assert_same(&before, &snapshot());
        assert!(dir.journals().is_empty());
    });
}

/// Kills the child right after it recorded the n-th change, before it made
/// it, for every n: recovery must revert the n-1 changes made and tolerate
/// the n-th, which does not exist.
fn crash_between_recording_and_making_each_change(adopted: bool) {
    in_private_netns(move || async move {
        lan();
        if adopted {
            adopted_tun();
        }
        let dir = TempDir::new();
        let before = snapshot();
        for n in 1..=ALL_CHANGES {
            let child = spawn_crashing_child(&dir.0, Some(n));
            kill_9(child);
            if !adopted {
                wait_until_absent(TUN).await;
            }
            let report = journal::recover(&dir.0, Some(TUN))
                .await
                .unwrap_or_else(|e| panic!("recovery after change {n}: {e}"));
            assert_eq!(report.rolled_back.len(), 1, "after change {n}: {report}");
            assert_eq!(report.rolled_back[0].changes, n, "after change {n}");
            assert!(dir.journals().is_empty(), "after change {n}");
            assert_same(&before, &snapshot());
        }
    });
}

#[test]
fn a_crash_between_recording_and_making_a_change_is_rolled_back_created_device() {
    crash_between_recording_and_making_each_change(false);
}

#[test]
fn a_crash_between_recording_and_making_a_change_is_rolled_back_adopted_device() {
    crash_between_recording_and_making_each_change(true);
}

/// Changes of every kind that were recorded but never made.
fn never_made() -> Vec<Change> {
    vec![
        Change::Address {
            net: "203.0.113.9/32".parse().unwrap(),
        },
        Change::Route(RouteSpec {
            prefix: "192.0.2.0/24".parse().unwrap(),
            table: TABLE,
            kind: RouteKind::Device,
        }),
        Change::Route(RouteSpec {
            prefix: "2001:db8:1::/48".parse().unwrap(),
            table: TABLE,
            kind: RouteKind::Throw,
        }),
        Change::Rule(RuleSpec {
            family: setup::Family::V6,
            priority: 2000,
            table: TABLE,
            unless_fwmark: Some(MARK),
            suppress_prefixlen: None,
        }),
    ]
}

#[test]
fn recorded_changes_that_were_never_made_are_tolerated_on_any_device() {
    in_private_netns(|| async {
        lan();
        adopted_tun();
        let dir = TempDir::new();
        let before = snapshot();

        // An adopted device that is still there: every kind is reverted
        // against it, and the never-made ones are "already gone".
        let queues = open_queues(TUN, 1, false).unwrap();
        let mut journal = Journal::create(&dir.0, TUN, false).unwrap();
        let applied = setup::apply_with(&full_plan(TUN), &mut journal).await.unwrap();
        std::mem::forget(applied);
        for change in never_made() {
            journal.before(&change).unwrap();
        }
        drop(queues);
        // Same pid, other start time: the pid was recycled, the owner is dead.
        edit_journal(journal.path(), |r| r.owner.start_time += 1);
        drop(journal);
        let report = journal::recover(&dir.0, None).await.unwrap();
        assert_eq!(report.rolled_back.len(), 1, "{report}");
        assert_same(&before, &snapshot());

        // A device that vanished: MTU, link and address changes of every
        // kind, recorded or made, have nothing left to revert.
        ip(&format!("tuntap del mode tun multi_queue name {TUN}"));
        let before = snapshot();
        let queues = open_queues(TUN, 1, false).unwrap();
        let mut journal = Journal::create(&dir.0, TUN, true).unwrap();
        let applied = setup::apply_with(&full_plan(TUN), &mut journal).await.unwrap();
        std::mem::forget(applied);
        for change in never_made()
            .into_iter()
            .chain([Change::Mtu { old: 9000 }, Change::LinkUp])
        {
            journal.before(&change).unwrap();
        }
        drop(queues);
        wait_until_absent(TUN).await;
        let dead = dead_pid();
        edit_journal(journal.path(), |r| r.owner.pid = dead);
        drop(journal);
        let report = journal::recover(&dir.0, None).await.unwrap();
        assert_eq!(report.rolled_back.len(), 1, "{report}");
        assert_same(&before, &snapshot());
    });
}

#[test]
fn a_new_device_of_the_same_name_is_not_touched() {
    in_private_netns(|| async {
        lan();
        let dir = TempDir::new();
        let child = spawn_crashing_child(&dir.0, None);
        kill_9(child);
        wait_until_absent(TUN).await;
        // A plain restart made the device again (another index) and set it
        // up its own way before the old journal was recovered.
        let _queues = open_queues(TUN, 1, false).unwrap();
        ip(&format!("link set {TUN} mtu 1300 up"));
        ip(&format!("addr add 198.18.0.1/30 dev {TUN}"));
        ip(&format!("route add 10.99.0.0/16 dev {TUN}"));
        let before = settled_snapshot();
        // What the dead instance left: its rules and the throw routes of
        // its table. Recovery removes that and nothing else.
        let leftover = |l: &&str| {
            l.contains("table 100") || l.starts_with("1000:") || l.starts_with("1001:") || l.starts_with("1002:")
        };
        assert!(before.lines().filter(leftover).count() >= 6 + 2, "{before}");

        let report = journal::recover(&dir.0, Some(TUN)).await.unwrap();
        assert_eq!(report.rolled_back.len(), 1, "{report}");
        let after = snapshot();
        assert_eq!(after.lines().filter(leftover).count(), 0, "{after}");
        let without_leftovers = |s: &str| s.lines().filter(|l| !leftover(l)).collect::<Vec<_>>().join("\n");
        assert_same(&without_leftovers(&before), &without_leftovers(&after));
    });
}

#[test]
fn a_running_owners_journal_is_left_alone_and_its_device_refused() {
    in_private_netns(|| async {
        lan();
        let dir = TempDir::new();
        let _queues = open_queues(TUN, 1, false).unwrap();
        let mut journal = Journal::create(&dir.0, TUN, true).unwrap();
        let applied = setup::apply_with(&full_plan(TUN), &mut journal).await.unwrap();
        let configured = settled_snapshot();

        let report = journal::cleanup(&dir.0).await.unwrap();
        assert_eq!(report.live.len(), 1, "{report}");
        assert_eq!(report.live[0].pid, std::process::id());
        assert!(report.rolled_back.is_empty(), "{report}");
        assert_same(&configured, &snapshot());
        assert_eq!(dir.journals(), [journal.path()]);

        // A second instance for the same device is refused...
        let err = Journal::create(&dir.0, TUN, false).unwrap_err();
        assert!(
            matches!(err, JournalError::InUse { pid, .. } if pid == std::process::id()),
            "{err}"
        );
        // ...also once the owner is dead, until its journal is recovered.
        let dead = dead_pid();
        let path = journal.path().to_path_buf();
        let original = std::fs::read(&path).unwrap();
        edit_journal(&path, |r| r.owner.pid = dead);
        let err = Journal::create(&dir.0, TUN, false).unwrap_err();
        assert!(matches!(err, JournalError::Stale { pid, .. } if pid == dead), "{err}");
        assert!(err.to_string().contains("tun2socks cleanup"), "{err}");
        std::fs::write(&path, original).unwrap();

        applied.undo().await.unwrap();
        journal.finish().unwrap();
    });
}

#[test]
fn damaged_journals_are_named_and_kept_while_the_others_are_recovered() {
    in_private_netns(|| async {
        lan();
        let dir = TempDir::new();
        let before = snapshot();
        let child = spawn_crashing_child(&dir.0, None);
        kill_9(child);
        wait_until_absent(TUN).await;

        let inode = netns_inode("/proc/thread-self/ns/net");
        let whole = std::fs::read_to_string(&dir.journals()[0]).unwrap();
        let damaged = [
            ("garbage0", "this is not json".to_string()),
            ("partial0", whole[..whole.len() / 2].to_string()),
            ("empty0", String::new()),
            ("future0", whole.replacen("\"version\": 2", "\"version\": 99", 1)),
        ];
        for (device, text) in &damaged {
            std::fs::write(dir.0.join(format!("{inode}-{device}.json")), text).unwrap();
        }
        // Another namespace's journal is not even read.
        let foreign = dir.0.join(format!("{}-{TUN}.json", inode + 1));
        std::fs::write(&foreign, "not ours").unwrap();

        let err = journal::recover(&dir.0, None).await.unwrap_err();
        let JournalError::Incomplete(report) = &err else {
            panic!("{err}")
        };
        assert_eq!(report.failed.len(), damaged.len(), "{err}");
        for (device, _) in &damaged {
            let name = format!("{inode}-{device}.json");
            assert!(err.to_string().contains(&name), "{name} not named in: {err}");
            assert!(dir.0.join(&name).exists(), "{name} was removed");
        }
        assert!(err.to_string().contains("format version 99"), "{err}");
        // The valid journal was still rolled back.
        assert_eq!(report.rolled_back.len(), 1, "{err}");
        assert_same(&before, &snapshot());
        assert!(foreign.exists());
        assert!(!journal_path(&dir.0, TUN).exists());
    });
}

#[test]
fn a_journal_of_a_vanished_namespace_or_another_boot_is_discarded_untouched() {
    in_private_netns(|| async {
        lan();
        let dir = TempDir::new();
        let _queues = open_queues(TUN, 1, false).unwrap();
        let mut journal = Journal::create(&dir.0, TUN, true).unwrap();
        let applied = setup::apply_with(&full_plan(TUN), &mut journal).await.unwrap();
        let configured = settled_snapshot();
        let path = journal.path().to_path_buf();
        drop(journal);
        let dead = dead_pid();

        for edit in [
            (|r: &mut JournalRecord| r.boot_id = "00000000-0000-0000-0000-000000000000".into())
                as fn(&mut JournalRecord),
            |r| r.netns.cookie = Some(r.netns.cookie.expect("kernel has SO_NETNS_COOKIE") + 1),
        ] {
            let original = std::fs::read(&path).unwrap();
            edit_journal(&path, |r| {
                r.owner.pid = dead;
                edit(r);
            });
            let report = journal::recover(&dir.0, None).await.unwrap();
            assert_eq!(report.discarded.len(), 1, "{report}");
            assert!(!path.exists());
            // What it lists is not this namespace's to revert.
            assert_same(&configured, &snapshot());
            std::fs::write(&path, original).unwrap();
        }
        std::fs::remove_file(&path).unwrap();
        applied.undo().await.unwrap();
    });
}

#[test]
fn no_directory_means_nothing_to_recover() {
    in_private_netns(|| async {
        let dir = TempDir::new();
        let missing = dir.0.join("absent");
        let report = journal::recover(&missing, None).await.unwrap();
        assert!(report.rolled_back.is_empty() && report.live.is_empty() && report.failed.is_empty());
        assert_eq!(report.to_string(), "no journals in this network namespace");
    });
}
