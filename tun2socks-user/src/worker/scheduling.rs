//! How a worker thread competes for its core with the rest of the host.
//!
//! A worker sleeps until a packet or a socket wakes it, then has a few
//! microseconds of work per datagram. Under ordinary time sharing that wake-up
//! can wait: measured with 8 downloads running (docs/BENCHMARKS.md,
//! "Real-time workers"), a pinned worker that had used its fair share waited up to
//! 3–5 ms behind the proxy and the applications on its core, at each of the
//! two hops a UDP round trip makes through it, while its own work took
//! under 100 µs. At `SCHED_FIFO` priority 1, the lowest real-time priority
//! (every kernel thread that asks for real time still goes first), it runs
//! as soon as it is woken.
//!
//! Real time has costs, measured in the same benchmark: a real-time worker
//! preempts whatever shares its core at every wake-up, so the proxy and a
//! sender on the same host get less done (connections/s −21 %, one upload
//! stream −15 %, CPU per GB +10 %). So by default (`auto`) a worker takes
//! real time only while it carries UDP (DNS included), the traffic whose
//! latency under load is the point: from a datagram until [`UDP_HOLD`]
//! after the last one. `realtime` keeps it always, `normal` never.
//!
//! Real time is a promise not to hog the core: a worker that keeps it busy
//! for more than [`HOG_SHARE`] of a [`WINDOW`] drops to ordinary scheduling
//! for [`COOL_DOWN`], so a flood cannot starve the host's other processes
//! (the kernel's own limit, 95 % of every second, is far too generous for
//! that). [`DutyCycle`] and [`Policy`] decide, without touching the system;
//! [`Scheduling`] applies their decisions to the calling thread.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

/// The lowest real-time priority, the one workers ask for.
pub const REALTIME_PRIORITY: i32 = 1;
/// How long the duty cycle is measured over.
pub const WINDOW: Duration = Duration::from_millis(50);
/// Share of a window above which a real-time worker is hogging its core.
pub const HOG_SHARE: f64 = 0.9;
/// How long a worker found hogging stays at ordinary priority.
pub const COOL_DOWN: Duration = Duration::from_secs(1);
/// With `auto`, how long after its last UDP datagram a worker keeps real time.
pub const UDP_HOLD: Duration = Duration::from_secs(1);

/// `--worker-priority`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WorkerPriority {
    /// Real time while the worker carries UDP (see [`UDP_HOLD`]), ordinary
    /// time sharing otherwise.
    #[default]
    Auto,
    /// `SCHED_FIFO` priority 1 always, with the hog guard.
    Realtime,
    /// Ordinary time sharing (`SCHED_OTHER`), as any process.
    Normal,
}

impl WorkerPriority {
    pub const ALL: [WorkerPriority; 3] = [WorkerPriority::Auto, WorkerPriority::Realtime, WorkerPriority::Normal];

    /// Whether the worker may ever ask for real time.
    pub fn uses_realtime(self) -> bool {
        self != WorkerPriority::Normal
    }

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerPriority::Auto => "auto",
            WorkerPriority::Realtime => "realtime",
            WorkerPriority::Normal => "normal",
        }
    }
}

impl fmt::Display for WorkerPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WorkerPriority {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("`{s}` is none of auto, realtime, normal"))
    }
}

/// What the worker should do about its scheduling now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    Stay,
    /// It hogged its core: to ordinary scheduling.
    Demote,
    /// The cool-down is over: back to real time.
    Promote,
}

/// The hog guard's arithmetic: CPU time against wall time, window by window.
#[derive(Debug)]
pub struct DutyCycle {
    window_start: Instant,
    cpu_at_start: Duration,
    /// When the worker was demoted, while it is.
    demoted_at: Option<Instant>,
}

impl DutyCycle {
    pub fn new(now: Instant, cpu: Duration) -> Self {
        DutyCycle {
            window_start: now,
            cpu_at_start: cpu,
            demoted_at: None,
        }
    }

    /// Whether a window has passed, so that [`DutyCycle::observe`] wants
    /// the thread's CPU time (a system call; the wall clock is not).
    pub fn due(&self, now: Instant) -> bool {
        now.duration_since(self.window_start) >= WINDOW
    }

    /// Closes the window at `now`, when the thread had used `cpu` in all.
    pub fn observe(&mut self, now: Instant, cpu: Duration) -> Switch {
        let wall = now.duration_since(self.window_start);
        let used = cpu.saturating_sub(self.cpu_at_start);
        self.window_start = now;
        self.cpu_at_start = cpu;
        match self.demoted_at {
            Some(at) if now.duration_since(at) >= COOL_DOWN => {
                self.demoted_at = None;
                Switch::Promote
            }
            Some(_) => Switch::Stay,
            None if used.as_secs_f64() > wall.as_secs_f64() * HOG_SHARE => {
                self.demoted_at = Some(now);
                Switch::Demote
            }
            None => Switch::Stay,
        }
    }

    /// Whether a hog demotion's cool-down is running.
    pub fn cooling_down(&self) -> bool {
        self.demoted_at.is_some()
    }
}

/// Whether the worker wants real time now, from its mode and its UDP
/// traffic (the hog guard aside).
#[derive(Debug)]
pub struct Policy {
    priority: WorkerPriority,
    last_udp: Option<Instant>,
}

impl Policy {
    pub fn new(priority: WorkerPriority) -> Self {
        Policy {
            priority,
            last_udp: None,
        }
    }

    /// `udp`: whether a UDP datagram arrived since the last call.
    pub fn wants_realtime(&mut self, now: Instant, udp: bool) -> bool {
        if udp {
            self.last_udp = Some(now);
        }
        match self.priority {
            WorkerPriority::Normal => false,
            WorkerPriority::Realtime => true,
            WorkerPriority::Auto => self.last_udp.is_some_and(|t| now.duration_since(t) < UDP_HOLD),
        }
    }

    /// With `auto`, how long until the hold after the last datagram ends.
    fn hold_left(&self, now: Instant) -> Option<Duration> {
        let last = self.last_udp.filter(|_| self.priority == WorkerPriority::Auto)?;
        UDP_HOLD.checked_sub(now.duration_since(last))
    }
}

/// A worker thread's scheduling, kept in line with [`Policy`] and the hog
/// guard. Lives on the worker's own thread.
#[derive(Debug)]
pub struct Scheduling {
    policy: Policy,
    guard: DutyCycle,
    /// Whether the thread is at real time now.
    realtime: bool,
    /// False once real time was refused: the worker stays at normal priority.
    allowed: bool,
    demotions: u64,
}

impl Scheduling {
    /// Sets the calling thread up for `priority`: `realtime` takes real time
    /// at once; `auto` takes it and leaves it again, to find out now (and
    /// say so now) whether it may. Real time may be refused (no
    /// CAP_SYS_NICE and no `RLIMIT_RTPRIO`, a container's cgroup, systemd's
    /// `RestrictRealtime=`): the worker then says so and runs at ordinary
    /// priority.
    pub fn start(priority: WorkerPriority) -> Self {
        let mut allowed = false;
        if priority.uses_realtime() {
            match set_realtime(true) {
                Ok(()) => allowed = true,
                Err(error) => warn!(
                    %error,
                    "cannot run the worker at real-time priority; it runs at normal priority \
                     (UDP latency under load suffers; see --worker-priority)"
                ),
            }
        }
        let realtime = allowed && priority == WorkerPriority::Realtime;
        if allowed && !realtime {
            let _ = set_realtime(false);
        }
        debug!(%priority, realtime, "worker scheduling");
        Scheduling {
            policy: Policy::new(priority),
            guard: DutyCycle::new(Instant::now(), thread_cpu_time()),
            realtime,
            allowed,
            demotions: 0,
        }
    }

    /// Called every round of the worker loop with whether a UDP datagram
    /// arrived since the last round: cheap (one clock read) except once per
    /// [`WINDOW`] and when the priority changes. Returns true when the hog
    /// guard just took real time away.
    pub fn tick(&mut self, udp: bool) -> bool {
        if !self.allowed {
            return false;
        }
        let now = Instant::now();
        let demoted =
            self.guard.due(now) && self.guard.observe(now, thread_cpu_time()) == Switch::Demote && self.realtime;
        if demoted {
            self.demotions += 1;
            let pause = COOL_DOWN.as_secs_f64();
            if self.demotions == 1 {
                info!(
                    "worker kept its core over {:.0} % busy: normal priority for {pause} s (counted as realtime_demotions)",
                    HOG_SHARE * 100.0
                );
            } else {
                debug!(
                    demotions = self.demotions,
                    "worker hogged its core again: normal priority for {pause} s"
                );
            }
        }
        let want = self.policy.wants_realtime(now, udp) && !self.guard.cooling_down();
        if want != self.realtime {
            if let Err(error) = set_realtime(want) {
                // Lowering one's own priority is always allowed, so this is
                // real time refused after all: stop asking.
                warn!(%error, want, "cannot change the worker's priority; it stays at normal priority");
                let _ = set_realtime(false);
                self.allowed = false;
                self.realtime = false;
                return demoted;
            }
            self.realtime = want;
        }
        demoted
    }

    /// When the worker loop should come back to drop real time that `auto`
    /// no longer wants, even if no packet wakes it (an idle real-time
    /// thread costs nothing, but `chrt -p` should tell the truth).
    pub fn next_change(&self) -> Option<Duration> {
        if !self.realtime {
            return None;
        }
        self.policy.hold_left(Instant::now())
    }
}

/// `SCHED_FIFO` at [`REALTIME_PRIORITY`] (or back to `SCHED_OTHER`) for the
/// calling thread. Threads the worker may start later do not inherit it
/// (`SCHED_RESET_ON_FORK`).
fn set_realtime(on: bool) -> io::Result<()> {
    let (policy, priority) = if on {
        (libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, REALTIME_PRIORITY)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` outlives the call.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn parses_what_it_prints() {
        for p in WorkerPriority::ALL {
            assert_eq!(p.to_string().parse::<WorkerPriority>(), Ok(p));
        }
        assert!("fifo".parse::<WorkerPriority>().is_err());
        assert_eq!(WorkerPriority::default(), WorkerPriority::Auto);
    }

    #[test]
    fn auto_wants_real_time_from_a_datagram_until_the_hold_has_passed() {
        let t0 = Instant::now();
        let mut p = Policy::new(WorkerPriority::Auto);
        assert!(!p.wants_realtime(t0, false));
        assert!(p.wants_realtime(t0 + MS, true));
        assert!(p.wants_realtime(t0 + UDP_HOLD, false));
        assert!(!p.wants_realtime(t0 + MS + UDP_HOLD, false));
        // Each datagram extends it.
        assert!(p.wants_realtime(t0 + 2 * UDP_HOLD, true));
        assert!(p.wants_realtime(t0 + 2 * UDP_HOLD + 500 * MS, false));
    }

    #[test]
    fn realtime_and_normal_ignore_traffic() {
        let t0 = Instant::now();
        let (mut rt, mut normal) = (
            Policy::new(WorkerPriority::Realtime),
            Policy::new(WorkerPriority::Normal),
        );
        for (i, udp) in [false, true, false].into_iter().enumerate() {
            let t = t0 + (i as u32) * 10 * UDP_HOLD;
            assert!(rt.wants_realtime(t, udp));
            assert!(!normal.wants_realtime(t, udp));
        }
    }

    #[test]
    fn a_busy_but_not_hogging_worker_stays_realtime() {
        let t0 = Instant::now();
        let mut d = DutyCycle::new(t0, Duration::ZERO);
        assert!(!d.due(t0 + 49 * MS));
        assert!(d.due(t0 + WINDOW));
        // 40 ms of 50: 80 %.
        assert_eq!(d.observe(t0 + 50 * MS, 40 * MS), Switch::Stay);
        // 44 ms of 50: 88 %.
        assert_eq!(d.observe(t0 + 100 * MS, 84 * MS), Switch::Stay);
    }

    #[test]
    fn a_hogging_worker_is_demoted_for_the_cool_down_then_promoted() {
        let t0 = Instant::now();
        let mut d = DutyCycle::new(t0, 10 * MS);
        // 48 ms of CPU in a 50 ms window.
        assert_eq!(d.observe(t0 + 50 * MS, 58 * MS), Switch::Demote);
        assert!(d.cooling_down());
        // Still hogging while demoted: stays demoted, no second demotion.
        let mut cpu = 58 * MS;
        let mut t = t0 + 50 * MS;
        while t.duration_since(t0 + 50 * MS) + WINDOW < COOL_DOWN {
            t += WINDOW;
            cpu += WINDOW;
            assert_eq!(d.observe(t, cpu), Switch::Stay);
        }
        t += WINDOW;
        cpu += WINDOW;
        assert_eq!(d.observe(t, cpu), Switch::Promote);
        assert!(!d.cooling_down());
        // A window that still hogs demotes it again.
        assert_eq!(d.observe(t + WINDOW, cpu + WINDOW), Switch::Demote);
    }

    #[test]
    fn a_long_sleep_is_a_quiet_window() {
        let t0 = Instant::now();
        let mut d = DutyCycle::new(t0, Duration::ZERO);
        // Five seconds idle, 30 ms of work at the end.
        assert_eq!(d.observe(t0 + Duration::from_secs(5), 30 * MS), Switch::Stay);
    }
}
