//! The copier watchdog as a process: `host-worker copier-watchdog <deadline-ms> <program> …`.
use std::{
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

fn watchdog(deadline_ms: u64, program: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_host-worker"));
    cmd.arg("copier-watchdog")
        .arg(deadline_ms.to_string())
        .args(program)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[test]
fn a_copier_that_ends_passes_its_exit_code_through() {
    let mut child = watchdog(5_000, &["sh", "-c", "exit 3"]).spawn().unwrap();
    // Held open while waiting: Child::wait would close it, and a closed pipe means "the worker is
    // gone" (exit 124) — a race with the copier's own end on a loaded machine.
    let _stdin = child.stdin.take().unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3));
}

#[test]
fn a_silent_worker_has_its_copier_killed_at_the_deadline() {
    let start = Instant::now();
    let mut child = watchdog(300, &["sleep", "30"]).spawn().unwrap();
    // Held open and silent (Child::wait would close it, which is the other way to die).
    let _stdin = child.stdin.take().unwrap();
    let status = child.wait().unwrap();
    let took = start.elapsed();
    assert_eq!(status.code(), Some(124));
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[test]
fn heartbeats_keep_the_copier_alive_and_a_closed_pipe_kills_it() {
    let mut child = watchdog(300, &["sleep", "30"]).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for _ in 0..15 {
        stdin.write_all(b".").unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // 1.5 s of heartbeats, five times the deadline: still running.
    assert!(child.try_wait().unwrap().is_none());
    drop(stdin);
    let start = Instant::now();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(124));
    assert!(
        start.elapsed() < Duration::from_millis(250),
        "{:?}",
        start.elapsed()
    );
}
