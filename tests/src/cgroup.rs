//! A cgroup v2 directory for one test, removed on drop, which the test process can enter and
//! leave (so its own sockets are judged as the guarded service's).

use std::path::{Path, PathBuf};

/// The cgroup v2 mount point, from /proc/mounts.
pub fn root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/mounts").expect("read /proc/mounts");
    mounts
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(fields[1]))
        })
        .expect("a cgroup2 mount")
}

/// This process's cgroup v2 path, relative to the root.
fn current() -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").expect("read /proc/self/cgroup");
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("a cgroup v2 entry")
        .to_owned()
}

pub struct TestCgroup {
    /// Relative to the root, with a leading `/` (as config wants it).
    pub relative: String,
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn create(tag: &str) -> TestCgroup {
        let relative = format!("/pg-test-{tag}-{}", std::process::id());
        let path = root().join(relative.trim_start_matches('/'));
        let _ = std::fs::remove_dir(&path);
        std::fs::create_dir(&path).expect("create test cgroup");
        TestCgroup { relative, path }
    }

    /// Moves this whole process into the cgroup until the returned guard drops.
    pub fn enter(&self) -> Inside {
        let back = root().join(current().trim_start_matches('/'));
        move_self(&self.path);
        Inside { back }
    }

    /// Deletes and re-creates the directory, as systemd does when it restarts a unit: same path,
    /// new cgroup id.
    pub fn recreate(&self) {
        std::fs::remove_dir(&self.path).expect("remove test cgroup (it must be empty)");
        std::fs::create_dir(&self.path).expect("re-create test cgroup");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

pub struct Inside {
    back: PathBuf,
}

impl Drop for Inside {
    fn drop(&mut self) {
        move_self(&self.back);
    }
}

fn move_self(cgroup: &Path) {
    std::fs::write(cgroup.join("cgroup.procs"), std::process::id().to_string())
        .unwrap_or_else(|err| panic!("move into {}: {err}", cgroup.display()));
}
