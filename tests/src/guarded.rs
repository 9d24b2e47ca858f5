//! A stand-in for the guarded LLM proxy: a shell in its own test cgroup, with a planted secret in
//! its environment, killed (and its cgroup removed) on drop. Only busybox-level tools are used, so
//! it runs natively and in the VM alike.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::cgroup::TestCgroup;

/// A secret value no output may ever contain.
pub const CANARY: &str = "sk-canary-7f3c9e1b5d2a4f60";

pub struct GuardedProcess {
    child: Child,
    /// Its scratch directory (`TMPDIR`, the trigger file's home).
    pub dir: tempfile::TempDir,
    pub cgroup: TestCgroup,
}

impl GuardedProcess {
    /// Starts `sh -c script` with `OPENAI_API_KEY` set to [`CANARY`] and `TMPDIR` set to a fresh
    /// directory, and moves it into a new test cgroup tagged `tag`.
    pub fn start(tag: &str, script: &str) -> GuardedProcess {
        let cgroup = TestCgroup::create(tag);
        let dir = tempfile::tempdir().expect("temp dir");
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .env("OPENAI_API_KEY", CANARY)
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the guarded shell");
        std::fs::write(cgroup.path.join("cgroup.procs"), child.id().to_string())
            .expect("move the guarded shell into its cgroup");
        GuardedProcess { child, dir, cgroup }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A path inside its scratch directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Whether it is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// Polls `pred` every 50 ms until it holds or `within` passes.
pub fn eventually(within: Duration, mut pred: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if pred() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for GuardedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its own children (a `sleep`) leave the cgroup when they die; give them a moment so the
        // cgroup can be removed.
        let procs = self.cgroup.path.join("cgroup.procs");
        for pid in std::fs::read_to_string(&procs).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        eventually(Duration::from_secs(5), || {
            std::fs::read_to_string(&procs).map_or(true, |t| t.trim().is_empty())
        });
    }
}
