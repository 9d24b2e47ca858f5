//! The disk fills while the config is being edited: on a tiny tmpfs filled to ENOSPC, `keys add`,
//! `keys revoke`, `egress allow` and `config init --force` each fail with a message naming the
//! file, the cause and the fix; the config stays byte-identical, no temp file is left behind and
//! no key is printed. Once space is freed, the same edits succeed.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use proxyguard_tests::{proxyguard_bin, require_root};

/// A 64 KiB tmpfs, unmounted on drop (lazily, so a failing test never leaves it busy).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Tmpfs {
        let dir = tempfile::tempdir().expect("mount point");
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("size=64k,mode=0700"),
        )
        .expect("mount a tmpfs (root only)");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = umount2(self.dir.path(), MntFlags::MNT_DETACH);
    }
}

/// Writes `path` until the filesystem is full (ENOSPC).
fn fill(path: &Path) {
    let mut file = fs::File::create(path).expect("filler");
    let block = [0xa5u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => panic!("filling the tmpfs: {err}"),
        }
    }
    // The last partial block too: one byte at a time, until not even that fits.
    while file.write(&[0]).is_ok_and(|n| n == 1) {}
}

fn proxyguard(config: &Path, args: &[&str]) -> Output {
    Command::new(proxyguard_bin())
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run proxyguard")
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Asserts a refused write: non-zero exit, a message with the file, the cause and the fix, the
/// config byte-identical, nothing on stdout, no temp file.
fn assert_refused(out: &Output, what: &str, config: &Path, before: &[u8]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what} succeeded on a full disk");
    assert!(
        stderr.contains(&config.display().to_string()),
        "{what}: {stderr}"
    );
    assert!(
        stderr.contains("No space left on device"),
        "{what}: {stderr}"
    );
    assert!(stderr.contains("left as it was"), "{what}: {stderr}");
    assert!(stderr.contains("free space"), "{what}: {stderr}");
    assert!(out.stdout.is_empty(), "{what} printed: {:?}", out.stdout);
    assert_eq!(
        fs::read(config).unwrap(),
        before,
        "{what} changed the config"
    );
    // The edit lock (`.proxyguard.toml.lock`, empty) stays by design: removing it would let two
    // editors lock two different files.
    let left: Vec<String> = names(config.parent().unwrap())
        .into_iter()
        .filter(|name| name != ".proxyguard.toml.lock")
        .collect();
    assert_eq!(
        left,
        ["filler", "proxyguard.toml"],
        "{what} left a file behind"
    );
}

#[test]
fn a_full_disk_leaves_the_config_intact_and_says_why() {
    require_root();
    let tmpfs = Tmpfs::mount();
    let outside = tempfile::tempdir().unwrap();
    let config: PathBuf = tmpfs.path().join("proxyguard.toml");
    // No daemon answers this socket, so the edits only touch the file.
    fs::write(
        &config,
        format!(
            "# operator's note: keep this line\n[control]\nsocket = \"{}\"\n\n[bind]\nenabled = false\n",
            outside.path().join("none.sock").display()
        ),
    )
    .unwrap();
    let out = proxyguard(&config, &["keys", "add", "existing"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let filler = tmpfs.path().join("filler");
    fill(&filler);
    let before = fs::read(&config).unwrap();

    let edits: [(&str, &[&str]); 4] = [
        ("keys add", &["keys", "add", "ci"]),
        ("keys revoke", &["keys", "revoke", "existing"]),
        ("egress allow", &["egress", "allow", "api.example.com:443"]),
        (
            "config init --force",
            &["config", "init", "--force", "--path"],
        ),
    ];
    for (what, args) in edits {
        let out = if what.starts_with("config init") {
            // `--path` takes the file; --config names it too, harmlessly.
            let mut args = args.to_vec();
            let path = config.to_string_lossy().into_owned();
            args.push(&path);
            proxyguard(&config, &args)
        } else {
            proxyguard(&config, args)
        };
        assert_refused(&out, what, &config, &before);
    }

    // Space again: the same edits go through.
    fs::remove_file(&filler).unwrap();
    for args in [
        &["keys", "add", "ci"][..],
        &["keys", "revoke", "existing"],
        &["egress", "allow", "api.example.com:443"],
    ] {
        let out = proxyguard(&config, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = fs::read_to_string(&config).unwrap();
    assert!(text.contains("# operator's note: keep this line"), "{text}");
    assert!(text.contains("name = \"ci\""), "{text}");
    assert!(!text.contains("name = \"existing\""), "{text}");
    assert!(text.contains("api.example.com:443"), "{text}");
    assert_eq!(
        names(tmpfs.path()),
        [".proxyguard.toml.lock", "proxyguard.toml"]
    );
}
