//! TLS termination (threat 8): the openai SDK over HTTPS with a CA made at test time, the
//! certificate replaced on SIGHUP without a restart, and the plaintext rule for non-loopback
//! listeners.

use std::{fs, path::Path, process::Command};

use proxyguard_tests::l7::{client_with_env, Guard, LiteLlm};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

const MASTER: &str = "sk-litellm-master-tls";

/// Writes a fresh CA to `ca.pem` and a server certificate for 127.0.0.1 signed by it.
fn issue(dir: &Path, cert: &Path, key: &Path, tag: &str) -> std::path::PathBuf {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("proxyguard test CA {tag}"));
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    fs::write(cert, leaf.pem()).unwrap();
    fs::write(key, leaf_key.serialize_pem()).unwrap();
    let ca_path = dir.join(format!("ca-{tag}.pem"));
    fs::write(&ca_path, ca.pem()).unwrap();
    ca_path
}

#[test]
fn https_with_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let first_ca = issue(dir.path(), &cert, &key, "first");
    let litellm = LiteLlm::start(MASTER, None, &[]);
    let tls = format!(
        "[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let mut guard = Guard::start(litellm.port, MASTER, &["alice"], &tls);
    assert_eq!(guard.daemon.ready["proxy"]["tls"], true);
    let https = guard.base.replacen("http://", "https://", 1);
    let alice = guard.key("alice").to_owned();
    let with_ca = |ca: &Path| {
        client_with_env(
            "chat",
            &https,
            &alice,
            None,
            &[("PG_TEST_CA", ca.to_str().unwrap())],
        )
    };

    assert_eq!(with_ca(&first_ca)["ok"], true, "chat over TLS");
    for version in ["1.2", "1.3"] {
        let pinned = client_with_env(
            "chat",
            &https,
            &alice,
            None,
            &[
                ("PG_TEST_CA", first_ca.to_str().unwrap()),
                ("PG_TEST_TLS", version),
            ],
        );
        assert_eq!(pinned["ok"], true, "TLS {version}: {pinned}");
    }
    let plain = client_with_env("chat", &guard.base, &alice, None, &[]);
    assert_eq!(plain["ok"], false, "plain HTTP to the TLS port: {plain}");

    // A renewed certificate from another CA applies on SIGHUP, for new connections.
    let second_ca = issue(dir.path(), &cert, &key, "second");
    let config = fs::read_to_string(&guard.daemon.config_path).unwrap();
    let outcome = guard.daemon.reload_with(&config);
    assert_eq!(outcome["kind"], "reloaded", "{outcome}");
    assert_eq!(
        with_ca(&second_ca)["ok"],
        true,
        "the new certificate is served"
    );
    let stale = with_ca(&first_ca);
    assert!(
        stale["connection_error"].is_string(),
        "the old CA no longer verifies: {stale}"
    );

    // A broken key file refuses the reload, and the running certificate stays.
    fs::write(&key, "not a key").unwrap();
    let outcome = guard.daemon.reload_with(&config);
    assert_eq!(outcome["kind"], "reload_failed", "{outcome}");
    assert_eq!(
        with_ca(&second_ca)["ok"],
        true,
        "still serving after a refused reload"
    );
}

#[test]
fn plaintext_off_loopback_needs_tls_or_the_explicit_switch() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pg.toml");
    let check = |body: &str| {
        fs::write(&path, body).unwrap();
        Command::new(proxyguard_tests::proxyguard_bin())
            .args(["config", "check", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let refused = check("[proxy]\nlisten = \"0.0.0.0:8443\"\n");
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("proxy.listen") && stderr.contains("tls"),
        "{stderr}"
    );
    let allowed = check("[proxy]\nlisten = \"0.0.0.0:8443\"\nallow_plaintext = true\n");
    assert_eq!(
        allowed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}
