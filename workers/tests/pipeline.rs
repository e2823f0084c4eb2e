//! The pipeline against a real nats-server, with the real worker binaries as processes.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use natsflow::fetcher::Summary;

const OBJECTS: u64 = 100_000;

struct Run {
    nats: Nats,
    dir: std::path::PathBuf,
    out: std::path::PathBuf,
    saver: Proc,
    mappers: Vec<Proc>,
}

fn start(name: &str, mappers: usize, work_ms: (u64, u64)) -> Run {
    let nats = Nats::start(name);
    let dir = temp_dir(name);
    let out = dir.join("out");
    let saver = Proc::worker("saver", "saver", &nats, &dir)
        .args(&["--sink", "file", "--sink-dir", out.to_str().unwrap()])
        .start();
    let mappers = (0..mappers)
        .map(|i| {
            Proc::worker("mapper", &format!("mapper-{i}"), &nats, &dir)
                .env("NATSFLOW_WORK_MS_MIN", &work_ms.0.to_string())
                .env("NATSFLOW_WORK_MS_MAX", &work_ms.1.to_string())
                .start()
        })
        .collect();
    Run {
        nats,
        dir,
        out,
        saver,
        mappers,
    }
}

fn fetcher(run: &Run, ack_timeout: &str) -> Proc {
    let summary = run.dir.join("summary.json");
    Proc::worker("fetcher", "fetcher", &run.nats, &run.dir).args(&[
        "--objects",
        &OBJECTS.to_string(),
        "--ack-timeout",
        ack_timeout,
        "--exit-when-done",
        "--summary-file",
        summary.to_str().unwrap(),
    ])
}

fn summary(run: &Run) -> Summary {
    serde_json::from_slice(&std::fs::read(run.dir.join("summary.json")).unwrap()).unwrap()
}

/// Chunk files in every run folder under the sink's directory.
fn saved_files(run: &Run) -> usize {
    let count = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .starts_with("chunk-")
                })
                .count()
            })
            .unwrap_or(0)
    };
    std::fs::read_dir(&run.out)
        .map(|d| d.map(|e| count(&e.unwrap().path())).sum())
        .unwrap_or(0)
}

fn full_run(name: &str, mappers: usize) {
    let run = start(name, mappers, (0, 0));
    let mut f = fetcher(&run, "30s").start();
    assert!(
        f.wait(Duration::from_secs(120)).success(),
        "{}",
        f.log_text()
    );
    let s = summary(&run);
    println!("{mappers} mapper(s): {s:?}");
    assert!(s.complete);
    assert_eq!(
        (s.chunks, s.sends, s.resends, s.duplicates),
        (1000, 1000, 0, 0)
    );
    assert_all_chunks_saved(&run.out, OBJECTS, 100, 1);
    assert_eq!(run.saver.metric("natsflow_chunks_saved_total"), 1000.0);
    assert_eq!(run.saver.metric("natsflow_duplicates_dropped_total"), 0.0);
    let mapped: f64 = run
        .mappers
        .iter()
        .map(|m| m.metric("natsflow_chunks_processed_total"))
        .sum();
    assert_eq!(mapped, 1000.0, "each chunk mapped once");
}

#[test]
fn full_run_with_one_mapper_saves_every_chunk_once() {
    full_run("one-mapper", 1);
}

#[test]
fn full_run_with_ten_mappers_saves_every_chunk_once() {
    full_run("ten-mappers", 10);
}

#[test]
fn killed_mapper_saver_and_fetcher_lose_nothing() {
    let mut run = start("faults", 4, (5, 15));
    let mut f = fetcher(&run, "1s").start();
    let at = |n: usize, run: &Run| {
        wait_until(
            Duration::from_secs(60),
            &format!("{n} chunks saved"),
            || saved_files(run) >= n,
        )
    };

    at(200, &run);
    let victim = fastrand::usize(..run.mappers.len());
    run.mappers[victim].sigkill();
    println!("SIGKILL mapper-{victim} at {} chunks", saved_files(&run));
    std::thread::sleep(Duration::from_millis(300));
    run.mappers[victim].spawn();

    at(400, &run);
    run.saver.sigkill();
    println!("SIGKILL saver at {} chunks", saved_files(&run));
    std::thread::sleep(Duration::from_millis(300));
    run.saver.spawn();

    at(600, &run);
    f.sigkill();
    println!("SIGKILL fetcher at {} chunks", saved_files(&run));
    std::thread::sleep(Duration::from_millis(300));
    f.spawn();

    assert!(
        f.wait(Duration::from_secs(120)).success(),
        "{}",
        f.log_text()
    );
    let s = summary(&run);
    println!("after the faults: {s:?}");
    assert!(s.complete);
    // Progress is saved every 500 ms, so a SIGKILL loses at most that much of it; starting
    // over would resume nothing and send all 1000 chunks again. Re-sends after the ack
    // timeout come on top (the debug-build saver with fsync is slow), so count first sends.
    let first_sends = s.sends - s.resends;
    assert!(
        s.chunks_resumed >= 100 && first_sends <= 1000 - s.chunks_resumed,
        "the restarted fetcher resumed ({} chunks resumed, {first_sends} first sends)",
        s.chunks_resumed,
    );
    assert_all_chunks_saved(&run.out, OBJECTS, 100, 1);
}

#[test]
fn nats_server_restart_mid_run_still_completes() {
    let mut run = start("nats-restart", 3, (1, 5));
    let mut f = fetcher(&run, "1s").start();
    wait_until(Duration::from_secs(60), "300 chunks saved", || {
        saved_files(&run) >= 300
    });
    run.nats.kill();
    println!("nats-server killed at {} chunks", saved_files(&run));
    std::thread::sleep(Duration::from_millis(500));
    run.nats.restart();
    assert!(
        f.wait(Duration::from_secs(120)).success(),
        "{}",
        f.log_text()
    );
    let s = summary(&run);
    println!("after the restart: {s:?}");
    assert!(s.complete);
    assert_all_chunks_saved(&run.out, OBJECTS, 100, 1);
    assert!(run.saver.metric("natsflow_nats_reconnects_total") >= 1.0);
}

/// Serves `body` once per connection, in small pieces, as a slow API would.
fn serve_slowly(body: String) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/people", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            write!(s, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
            for piece in body.as_bytes().chunks(4096) {
                s.write_all(piece).unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    url
}

#[test]
fn http_source_json_array_and_ndjson_are_chunked_and_saved() {
    let people: Vec<serde_json::Value> = (0..1050)
        .map(|i| serde_json::json!({"uuid": format!("id-{i}"), "fn": "Person", "ln": format!("N{i}"), "friends": []}))
        .collect();
    let array = serde_json::to_string(&people).unwrap();
    let ndjson: String = people.iter().map(|p| format!("{p}\n")).collect();
    for (name, body) in [("http-array", array), ("http-ndjson", ndjson)] {
        let run = start(name, 3, (0, 0));
        let url = serve_slowly(body);
        let summary_file = run.dir.join("summary.json");
        let mut f = Proc::worker("fetcher", "fetcher", &run.nats, &run.dir)
            .args(&[
                "--source",
                "http",
                "--source-url",
                &url,
                "--exit-when-done",
                "--summary-file",
                summary_file.to_str().unwrap(),
            ])
            .start();
        assert!(
            f.wait(Duration::from_secs(60)).success(),
            "{}",
            f.log_text()
        );
        let s = summary(&run);
        assert!(s.complete, "{s:?}");
        assert_eq!((s.objects, s.chunks, s.duplicates), (1050, 11, 0), "{name}");
        for i in 0..11u64 {
            let saved: serde_json::Value = serde_json::from_slice(
                &std::fs::read(natsflow::saver::sink::chunk_path(&run_folder(&run.out), i))
                    .unwrap(),
            )
            .unwrap();
            let data = saved["data"].as_array().unwrap();
            assert_eq!(
                data.len(),
                if i == 10 { 50 } else { 100 },
                "{name} chunk #{i}"
            );
            let first = (i * 100) as usize;
            assert_eq!(
                data[0],
                serde_json::json!({"id": format!("id-{first}"), "name": format!("Person N{first}")})
            );
        }
    }
}

#[test]
fn a_malformed_http_source_stops_the_fetcher_naming_the_object() {
    let nats = Nats::start("http-bad");
    let dir = temp_dir("http-bad");
    let url = serve_slowly("{\"uuid\": \"a\"}\n{\"uuid\": \"b\", oops}\n".into());
    let mut f = Proc::worker("fetcher", "fetcher", &nats, &dir)
        .args(&["--source", "http", "--source-url", &url])
        .start();
    let status = f.wait(Duration::from_secs(10));
    assert!(!status.success(), "{}", f.log_text());
    assert!(
        f.log_text()
            .contains("the source is malformed: object #1 is not JSON"),
        "{}",
        f.log_text()
    );
}
