//! Feature detection, end to end: the daemon reports each kernel feature with a plain reason, and
//! a BPF LSM program loads wherever the kernel allows it (in the VM it must).

use proxyguard_tests::{feature_or_skip, require_root, Daemon};
use serde_json::Value;

fn feature<'a>(daemon: &'a Daemon, name: &str) -> &'a Value {
    daemon.ready["features"]
        .as_array()
        .expect("features in the ready record")
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("feature {name} is not reported"))
}

#[test]
fn every_feature_is_reported_with_a_reason() {
    require_root();
    let daemon = Daemon::start("");
    for name in ["btf", "cgroup2", "bpffs", "tracefs", "bpf-lsm", "kprobes"] {
        let f = feature(&daemon, name);
        assert!(f["available"].is_boolean(), "{f}");
        let detail = f["detail"].as_str().unwrap_or_default();
        assert!(
            !detail.is_empty() && !detail.starts_with("os error"),
            "{name}: {f}"
        );
    }
    // The daemon mounts tracefs and bpffs itself when they are missing, and needs cgroup2.
    for name in ["cgroup2", "tracefs", "bpffs", "btf"] {
        assert_eq!(
            feature(&daemon, name)["available"],
            true,
            "{}",
            feature(&daemon, name)
        );
    }
}

#[test]
fn bpf_lsm_programs_load_where_the_kernel_allows_them() {
    require_root();
    let daemon = Daemon::start("");
    let lsm = feature(&daemon, "bpf-lsm");
    let available = lsm["available"].as_bool().unwrap();
    let detail = lsm["detail"].as_str().unwrap();
    if feature_or_skip("bpf_lsm_programs_load", "BPF LSM", available, detail) {
        assert!(detail.contains("LSM programs load"), "{detail}");
    } else {
        assert!(
            detail.contains("detected, not denied"),
            "the fallback must be named: {detail}"
        );
    }
}

/// kprobes (the environ watch's open probe) are found where the kernel has them: Debian's
/// kernels, so the VM; this host's kernel has none, and says so.
#[test]
fn kprobes_are_found_where_the_kernel_has_them() {
    require_root();
    let daemon = Daemon::start("");
    let kprobes = feature(&daemon, "kprobes");
    let detail = kprobes["detail"].as_str().unwrap();
    if feature_or_skip(
        "kprobes_are_found_where_the_kernel_has_them",
        "kprobes",
        kprobes["available"] == true,
        detail,
    ) {
        assert!(detail.contains("kprobe event source"), "{detail}");
    } else {
        assert!(detail.starts_with("absent from this kernel"), "{detail}");
    }
}
