//! The copier's watchdog, sanlock's role for a hung host-worker. A copy runs as
//! `host-worker copier-watchdog <deadline-ms> qemu-img …`: a small process between the worker and
//! qemu-img that kills qemu-img when the worker stops sending heartbeats on its stdin for longer than
//! the deadline, and when that stdin closes (the worker died). The worker sends heartbeats only while
//! its session lease is valid, and the deadline ends before the lease can expire, so a worker that is
//! stopped (SIGSTOP, a hung kernel call, a paused VM) — and so cannot fence itself — still has its
//! copier killed before etcd can give the volume to anyone else. qemu-img also dies with the watchdog
//! (parent-death signal), and the watchdog with the worker.
use std::{
    io::Read as _,
    process::{Child, Command, ExitStatus},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// The first argument that makes `host-worker` run as a copier's watchdog.
pub const SUBCOMMAND: &str = "copier-watchdog";

/// Exit code when the watchdog killed its copier for missing heartbeats (as timeout(1)).
pub const EXPIRED: i32 = 124;

/// The heartbeat deadline and interval for a session TTL: the deadline is half the TTL, well before
/// the lease can expire after the worker's last renewal (at least two thirds of the TTL after it
/// stops, as it renews every third), and heartbeats go five times per deadline.
pub fn timing(ttl: Duration) -> (Duration, Duration) {
    let deadline = (ttl / 2).max(Duration::from_millis(500));
    (deadline, deadline / 5)
}

/// Runs the watchdog: `args` are `<deadline-ms> <program> [args…]`. Returns the exit code.
pub fn main(args: &[String]) -> i32 {
    let (Some(deadline), Some(program)) = (
        args.first().and_then(|d| d.parse::<u64>().ok()),
        args.get(1),
    ) else {
        eprintln!("usage: host-worker {SUBCOMMAND} <deadline-ms> <program> [args…]");
        return 2;
    };
    let mut cmd = Command::new(program);
    cmd.args(&args[2..]);
    crate::qemu::die_with_parent(&mut cmd);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{SUBCOMMAND}: cannot run {program}: {e}");
            return 127;
        }
    };
    watch(child, Duration::from_millis(deadline))
}

fn watch(mut child: Child, deadline: Duration) -> i32 {
    let last = Arc::new(Mutex::new(Instant::now()));
    let closed = Arc::new(AtomicBool::new(false));
    {
        let (last, closed) = (last.clone(), closed.clone());
        std::thread::spawn(move || {
            let mut stdin = std::io::stdin();
            let mut buf = [0u8; 64];
            while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {
                *last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
            }
            closed.store(true, Ordering::SeqCst);
        });
    }
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return code(status);
        }
        let silent = last.lock().unwrap_or_else(|p| p.into_inner()).elapsed();
        let why = if closed.load(Ordering::SeqCst) {
            Some("its worker is gone".to_string())
        } else if silent > deadline {
            Some(format!("no heartbeat from its worker for {silent:?}"))
        } else {
            None
        };
        if let Some(why) = why {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("{SUBCOMMAND}: copier killed: {why}");
            return EXPIRED;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_ends_well_before_the_lease_can() {
        for secs in [1, 4, 10, 30] {
            let ttl = Duration::from_secs(secs);
            let (deadline, every) = timing(ttl);
            assert!(deadline < ttl * 2 / 3, "{ttl:?}");
            assert!(every * 4 < deadline, "{ttl:?}");
        }
    }
}
