//! `natsflow run` as a user runs it: real nats-server, real worker processes.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

fn natsflow() -> Command {
    let mut c = Command::new(bin("natsflow"));
    c.env("NATSFLOW_NATS_SERVER", nats_server_bin());
    c
}

#[test]
fn run_saves_every_chunk_and_prints_the_summary() {
    let out = temp_dir("cli-run").join("out");
    let o = natsflow()
        .args(["run", "--objects", "5000", "--mappers", "3", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("{stdout}");
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        stdout.contains("natsflow run: all 50 chunks saved"),
        "{stdout}"
    );
    for line in [
        "objects       5000",
        "re-sends      0",
        "duplicates    0",
        "dead letters  0",
        "objects/s",
        "pipeline time",
    ] {
        assert!(stdout.contains(line), "summary has `{line}`:\n{stdout}");
    }
    assert_all_chunks_saved(&out, 5000, 100, 1);
}

#[test]
fn missing_nats_server_is_a_clear_error() {
    let o = natsflow()
        .env("NATSFLOW_NATS_SERVER", "/nonexistent/nats-server")
        .args(["run", "--objects", "100"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("nats-server not found"), "{stderr}");
    assert!(stderr.contains("--nats-url"), "{stderr}");
}

#[test]
fn a_worker_that_keeps_crashing_fails_the_run() {
    let o = natsflow()
        .args([
            "run",
            "--objects",
            "1000",
            "--max-restarts",
            "2",
            "--out",
            "/proc/natsflow-cannot-write-here",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("saver failed 3 times"), "{stderr}");
    assert!(
        stderr.contains("cannot use /proc/natsflow-cannot-write-here for the file sink"),
        "{stderr}"
    );
}

/// Every process whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.split_whitespace().nth(1) == Some(&pid.to_string()))
                })
                .unwrap_or(false)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

#[test]
fn ctrl_c_leaves_no_process_behind() {
    let mut run = natsflow()
        .args([
            "run",
            "--objects",
            "100000",
            "--mappers",
            "4",
            "--work-ms",
            "50-100",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = run.id();
    // nats-server, the saver, 4 mappers and the fetcher
    wait_until(Duration::from_secs(20), "7 child processes run", || {
        children(pid).len() == 7
    });
    let kids = children(pid);
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let started = Instant::now();
    let status = run.wait().unwrap();
    let stderr = std::io::read_to_string(run.stderr.take().unwrap()).unwrap();
    println!("stopped in {:?}: {stderr}", started.elapsed());
    assert!(!status.success());
    assert!(stderr.contains("interrupted"), "{stderr}");
    let left: Vec<u32> = kids.into_iter().filter(|&p| alive(p)).collect();
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn bench_prints_every_case_against_the_floor() {
    let o = natsflow()
        .args(["bench", "--runs", "1", "--objects", "5000"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    println!("{stdout}");
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for case in [
        "(a) raw request/reply",
        "(b) natsflow, 1 mapper",
        "(b) natsflow, 10 mapper",
        "(c) natsflow, 10 mappers, work 0-200 ms",
        "(d) peak memory (max RSS): fetcher",
        "(e) broadcaster, 6 replicas",
    ] {
        assert!(stdout.contains(case), "missing {case}:\n{stdout}");
    }
    assert!(
        !stdout.contains("mapper -,"),
        "every kind's memory was measured:\n{stdout}"
    );
}

#[test]
fn runs_into_the_same_out_directory_each_save_everything() {
    let out = temp_dir("cli-same-out");
    for _ in 0..2 {
        let o = natsflow()
            .args(["run", "--objects", "300", "--mappers", "2", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(stdout.contains("saved in      "), "{stdout}");
    }
    let folders: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(folders.len(), 2, "one folder per run");
    for f in folders {
        let chunks = std::fs::read_dir(f.unwrap().path()).unwrap().count();
        assert_eq!(chunks, 3, "every chunk of each run saved");
    }
}
