//! Child processes with their output in a log file, killed on drop, and
//! bounded runs of short commands.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::wait::poll;

/// A long-running child (a server, the daemon) in a process group of its own.
///
/// stdout and stderr go to one log file. Dropping it kills the whole group,
/// so servers that fork (danted) leave nothing behind.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` with its output appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err).process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            exited: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process has written so far.
    pub fn log(&self) -> String {
        read_lossy(&self.log)
    }

    /// The exit status if the process has exited (reaping it), else `None`.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().context("waiting for child")?;
        }
        Ok(self.exited)
    }

    /// Fails, with the log, if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.try_exit()? {
            None => Ok(()),
            Some(status) => bail!("{} exited ({status}); its log:\n{}", self.name, self.log()),
        }
    }

    /// Sends `signal` to the process itself (not its group).
    pub fn signal(&self, signal: i32) -> Result<()> {
        if self.exited.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) on our own child's pid, which is not yet reaped.
        if unsafe { libc::kill(self.pid() as i32, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).with_context(|| format!("signalling {}", self.name));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} to exit", self.name);
        poll(&what, timeout, || self.try_exit())
    }

    /// SIGTERM to the group, up to `grace` to exit, then SIGKILL.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.try_exit()? {
            return Ok(status);
        }
        self.signal_group(libc::SIGTERM);
        match self.wait_exit(grace) {
            Ok(status) => Ok(status),
            Err(_) => {
                self.kill();
                bail!("{} ignored SIGTERM for {grace:?}; killed", self.name)
            }
        }
    }

    /// SIGKILL to the whole group, and reap.
    pub fn kill(&mut self) {
        self.signal_group(libc::SIGKILL);
        if self.exited.is_none() {
            self.exited = self.child.wait().ok();
        }
    }

    fn signal_group(&self, signal: i32) {
        // The group outlives its leader when a server forks; signal it even
        // after the leader exited. Its id is the leader's pid (process_group(0)).
        // SAFETY: kill(2) on a process group we created.
        unsafe { libc::kill(-(self.pid() as i32), signal) };
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a short command to completion, killing it (and its group) if it takes
/// longer than `timeout`.
pub fn output_within(mut cmd: Command, timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let shown = format!("{cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("starting {shown}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match poll(&shown, timeout, || Ok(child.try_wait()?)) {
        Ok(status) => status,
        Err(e) => {
            // SAFETY: kill(2) on the process group of our own child.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            return Err(e);
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Like [`output_within`], but fails unless the command exits 0; returns stdout.
pub fn checked_output(cmd: Command, timeout: Duration) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = output_within(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut buf);
        }
        buf
    })
}

/// A file's contents as text, or an empty string if it cannot be read.
pub fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
