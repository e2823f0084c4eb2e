//! The operator's command line, as a user meets it.

use std::process::Command;

fn operator(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_natsflow-operator"))
        .args(args)
        .env_remove("NATSFLOW_MAX_CONCURRENT_RECONCILES")
        .output()
        .expect("run natsflow-operator")
}

#[test]
fn zero_concurrent_reconciles_is_refused_naming_the_flag() {
    let out = operator(&["--max-concurrent-reconciles", "0", "crd"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--max-concurrent-reconciles"), "{err}");
}

#[test]
fn help_names_every_flag() {
    let out = operator(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--namespace",
        "--metrics-addr",
        "--log-format",
        "--max-concurrent-reconciles",
        "--lease-namespace",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}
