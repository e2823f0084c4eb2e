//! Workers reach a nats-server that demands a token, a user and password, or TLS with the
//! operator's CA, configured only through the environment the operator sets.

mod common;

use std::{path::Path, process::Command, time::Duration};

use common::*;

fn ready_within(p: &Proc, t: Duration) -> bool {
    let deadline = std::time::Instant::now() + t;
    while std::time::Instant::now() < deadline {
        if http_get(p.metrics_port, "/readyz").starts_with("ready") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn token_auth() {
    let nats = Nats::start_with("auth-token", &["--auth", "s3cret-token"]);
    let dir = temp_dir("auth-token");
    let good = Proc::worker("saver", "saver", &nats, &dir)
        .env("NATSFLOW_NATS_TOKEN", "s3cret-token")
        .start();
    let bad = Proc::worker("saver", "saver-bad", &nats, &dir)
        .env("NATSFLOW_NATS_TOKEN", "wrong")
        .start();
    assert!(
        ready_within(&good, Duration::from_secs(10)),
        "{}",
        good.log_text()
    );
    assert!(
        !ready_within(&bad, Duration::from_secs(2)),
        "a wrong token must not connect"
    );
    assert!(
        bad.log_text().to_lowercase().contains("authorization"),
        "{}",
        bad.log_text()
    );
    assert!(
        !good.log_text().contains("s3cret-token") && !bad.log_text().contains("wrong"),
        "no token in logs"
    );
}

#[test]
fn user_and_password_auth() {
    let nats = Nats::start_with("auth-user", &["--user", "alice", "--pass", "wonderland"]);
    let dir = temp_dir("auth-user");
    let w = Proc::worker("mapper", "mapper", &nats, &dir)
        .env("NATSFLOW_NATS_USER", "alice")
        .env("NATSFLOW_NATS_PASSWORD", "wonderland")
        .start();
    assert!(
        ready_within(&w, Duration::from_secs(10)),
        "{}",
        w.log_text()
    );
    assert!(!w.log_text().contains("wonderland"));
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl on PATH");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn tls_with_a_private_ca() {
    let certs = temp_dir("tls-certs");
    std::fs::write(
        certs.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(
        &certs,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=natsflow-test-ca",
        ],
    );
    openssl(
        &certs,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    openssl(
        &certs,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let (cert, key) = (certs.join("server.pem"), certs.join("server.key"));
    let nats = Nats::start_with(
        "tls",
        &[
            "--tls",
            "--tlscert",
            cert.to_str().unwrap(),
            "--tlskey",
            key.to_str().unwrap(),
        ],
    );
    let dir = temp_dir("tls");
    let url = format!("tls://localhost:{}", nats.port);
    let good = Proc::worker("saver", "saver", &nats, &dir)
        .env("NATS_URL", &url)
        .env(
            "NATSFLOW_NATS_TLS_CA",
            certs.join("ca.pem").to_str().unwrap(),
        )
        .start();
    assert!(
        ready_within(&good, Duration::from_secs(10)),
        "{}",
        good.log_text()
    );
    // Without the CA the server's certificate is not trusted.
    let bad = Proc::worker("saver", "saver-no-ca", &nats, &dir)
        .env("NATS_URL", &url)
        .start();
    assert!(
        !ready_within(&bad, Duration::from_secs(2)),
        "an untrusted server must not be used"
    );
}
