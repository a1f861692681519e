//! The copier's watchdog, sanlock's role for a hung host-worker. A copy runs as
//! `host-worker copier-watchdog <deadline-ms> qemu-img …`: a small process between the worker and
//! qemu-img that kills qemu-img when the worker stops sending heartbeats on its stdin for longer than
//! the deadline, and when that stdin closes (the worker died). The worker sends heartbeats only while
//! its session lease is valid, and the deadline ends before the lease can expire, so a worker that is
//! stopped (SIGSTOP, a hung kernel call, a paused VM) — and so cannot fence itself — still has its
//! copier killed before etcd can give the volume to anyone else. qemu-img also dies with the watchdog
//! (parent-death signal), and the watchdog with the worker.
//!
//! It also measures what the copier writes: every [`REPORT_EVERY`] and once more when it has exited
//! (read from the zombie, before it is reaped), it prints `copier-watchdog: bytes-written <n>` on its
//! stderr — `n` is the copier's `wchar` from `/proc/<pid>/io`, every byte it passed to write(2) and
//! its kin, all threads included — which the worker takes out of the copier's error text and counts.
use std::{
    io::{Read as _, Write as _},
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

/// How often the copier's written bytes are reported while it runs.
pub const REPORT_EVERY: Duration = Duration::from_millis(250);

/// What starts a bytes-written report on the watchdog's stderr.
const BYTES_WRITTEN: &str = "copier-watchdog: bytes-written ";

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
    let mut meter = Meter::new(child.id());
    loop {
        if meter.exited() {
            meter.report();
            return child.wait().map(code).unwrap_or(1);
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
            meter.wait_exited();
            meter.report();
            let _ = child.wait();
            eprintln!("{SUBCOMMAND}: copier killed: {why}");
            return EXPIRED;
        }
        if meter.due() {
            meter.report();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Follows the copier's written bytes.
struct Meter {
    pid: u32,
    reported: Option<u64>,
    next: Instant,
}

impl Meter {
    fn new(pid: u32) -> Self {
        Self {
            pid,
            reported: None,
            next: Instant::now() + REPORT_EVERY,
        }
    }

    fn due(&mut self) -> bool {
        let due = Instant::now() >= self.next;
        if due {
            self.next += REPORT_EVERY;
        }
        due
    }

    /// Whether the copier has exited, leaving it unreaped (a zombie whose counters can still be read).
    fn exited(&self) -> bool {
        use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
        !matches!(
            waitid(Id::Pid(self.pid()), flags),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// Blocks until the copier has exited, leaving it unreaped.
    fn wait_exited(&self) {
        use nix::sys::wait::{waitid, Id, WaitPidFlag};
        let _ = waitid(
            Id::Pid(self.pid()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT,
        );
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.pid as i32)
    }

    /// Prints the written bytes when they changed (and at least once), as one write(2), so the line
    /// cannot interleave with the copier's own messages on the shared pipe.
    fn report(&mut self) {
        let Some(n) = written_bytes(self.pid) else {
            return;
        };
        if self.reported == Some(n) {
            return;
        }
        self.reported = Some(n);
        let line = format!("{BYTES_WRITTEN}{n}\n");
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// The bytes process `pid` has written so far (`wchar` of `/proc/<pid>/io`); also readable while it
/// is a zombie.
pub fn written_bytes(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines()
        .find_map(|l| l.strip_prefix("wchar:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Splits one line of the copier's stderr into its error text and the bytes-written figure the
/// watchdog put there. A report glued to the end of a copier message that had no newline still
/// counts; the message keeps the rest.
pub fn split_report(line: &str) -> (&str, Option<u64>) {
    if let Some(at) = line.find(BYTES_WRITTEN) {
        if let Ok(n) = line[at + BYTES_WRITTEN.len()..].trim_end().parse() {
            return (&line[..at], Some(n));
        }
    }
    (line, None)
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

    #[test]
    fn reports_are_taken_out_of_the_error_text() {
        assert_eq!(
            split_report("copier-watchdog: bytes-written 33554432"),
            ("", Some(33554432))
        );
        assert_eq!(
            split_report("qemu-img: oops copier-watchdog: bytes-written 7\r"),
            ("qemu-img: oops ", Some(7))
        );
        assert_eq!(
            split_report("qemu-img: Could not open 'x'"),
            ("qemu-img: Could not open 'x'", None)
        );
        assert_eq!(
            split_report("copier-watchdog: bytes-written lots"),
            ("copier-watchdog: bytes-written lots", None)
        );
        assert_eq!(
            split_report("copier-watchdog: copier killed: its worker is gone"),
            ("copier-watchdog: copier killed: its worker is gone", None)
        );
    }

    /// The counters of an exited, unreaped child are still readable, so the last bytes of a copy are
    /// never lost; after reaping they are gone.
    #[test]
    fn a_zombie_still_tells_what_it_wrote() {
        let child = Command::new("dd")
            .args([
                "if=/dev/zero",
                "of=/dev/null",
                "bs=1M",
                "count=3",
                "status=none",
            ])
            .spawn()
            .unwrap();
        let mut child = child;
        let meter = Meter::new(child.id());
        meter.wait_exited();
        assert!(meter.exited());
        let written = written_bytes(child.id()).expect("io of the zombie");
        assert!(written >= 3 << 20, "{written}");
        assert!(child.wait().unwrap().success());
        assert_eq!(written_bytes(child.id()), None);
    }
}
