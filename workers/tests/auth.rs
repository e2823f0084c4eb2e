//! Workers reach a nats-server that demands a token, a user and password, a creds file
//! (operator mode, with JWTs signed here as nsc would sign them) or TLS with the operator's CA,
//! configured only through the environment the operator sets.

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

#[test]
fn credentials_in_the_nats_url_are_used_and_never_logged() {
    let nats = Nats::start_with("auth-url", &["--user", "alice", "--pass", "wonderland"]);
    let dir = temp_dir("auth-url");
    let w = Proc::worker("mapper", "mapper", &nats, &dir)
        .env(
            "NATS_URL",
            &format!("nats://alice:wonderland@127.0.0.1:{}", nats.port),
        )
        .start();
    assert!(
        ready_within(&w, Duration::from_secs(10)),
        "{}",
        w.log_text()
    );
    assert!(
        w.log_text().contains("nats://***@127.0.0.1"),
        "{}",
        w.log_text()
    );
    assert!(!w.log_text().contains("wonderland"), "{}", w.log_text());

    let token = Nats::start_with("auth-url-token", &["--auth", "t0ken"]);
    let t = Proc::worker("saver", "saver", &token, &dir)
        .env(
            "NATS_URL",
            &format!("nats://t0ken@127.0.0.1:{}", token.port),
        )
        .start();
    assert!(
        ready_within(&t, Duration::from_secs(10)),
        "{}",
        t.log_text()
    );
    assert!(!t.log_text().contains("t0ken"), "{}", t.log_text());
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

/// A NATS JWT (v2) with `claims` about `subject`, signed by `issuer`.
fn jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
    let header = B64.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = serde_json::json!({
        "jti": format!("T{}", fastrand::u64(..)),
        "iat": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let body = format!("{header}.{}", B64.encode(claims.to_string()));
    let sig = issuer.sign(body.as_bytes()).unwrap();
    format!("{body}.{}", B64.encode(sig))
}

/// nats-server in operator mode trusting one account, and a creds file for a user of it,
/// as `nsc` would make them.
fn operator_mode(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (op, system, account, user) = (
        nkeys::KeyPair::new_operator(),
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_account(),
        nkeys::KeyPair::new_user(),
    );
    let unlimited = serde_json::json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let op_jwt = jwt(
        &op,
        &op.public_key(),
        "natsflow-test",
        serde_json::json!({"type": "operator", "version": 2}),
    );
    let account_jwt = jwt(
        &op,
        &account.public_key(),
        "pipeline",
        serde_json::json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    // JetStream needs a system account.
    let system_jwt = jwt(
        &op,
        &system.public_key(),
        "SYS",
        serde_json::json!({"type": "account", "version": 2}),
    );
    let user_jwt = jwt(
        &account,
        &user.public_key(),
        "worker",
        serde_json::json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}),
    );
    let conf = dir.join("operator.conf");
    std::fs::write(
        &conf,
        format!(
            "operator: {op_jwt}\nsystem_account: {sys}\nresolver: MEMORY\nresolver_preload: {{\n  {sys}: {system_jwt}\n  {}: {account_jwt}\n}}\n",
            account.public_key(),
            sys = system.public_key()
        ),
    )
    .unwrap();
    let creds = dir.join("worker.creds");
    std::fs::write(
        &creds,
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        ),
    )
    .unwrap();
    (conf, creds)
}

#[test]
fn creds_file_auth_against_an_operator_mode_server() {
    let dir = temp_dir("auth-creds");
    let (conf, creds) = operator_mode(&dir);
    let nats = Nats::start_with("auth-creds", &["-c", conf.to_str().unwrap()]);
    let good = Proc::worker("saver", "saver", &nats, &dir)
        .env("NATSFLOW_NATS_CREDS_FILE", creds.to_str().unwrap())
        .start();
    assert!(
        ready_within(&good, Duration::from_secs(10)),
        "{}",
        good.log_text()
    );
    // The same server turns away a worker without credentials.
    let bad = Proc::worker("saver", "saver-no-creds", &nats, &dir).start();
    assert!(
        !ready_within(&bad, Duration::from_secs(2)),
        "a worker without credentials must not connect"
    );
    assert!(
        bad.log_text().to_lowercase().contains("authorization"),
        "{}",
        bad.log_text()
    );
    let seed = std::fs::read_to_string(&creds).unwrap();
    let seed = seed.lines().find(|l| l.starts_with("SU")).unwrap();
    assert!(!good.log_text().contains(seed), "no seed in logs");
}
