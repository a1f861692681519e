//! The host-worker's metrics: what its copies write, how fast and how long they run, and the state
//! of its slots, SPM role and session. The bytes are measured (the copier watchdog reads the
//! copier's own write counter, see `watchdog.rs`), never estimated from progress; the host gauges are
//! read from the worker's state at each scrape, so they cannot drift from it.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, LazyLock, Mutex, Weak,
    },
    time::{Duration, Instant},
};

use datapath_telemetry::metrics::{
    long_histogram, on_scrape, register, GaugeFamily, HistogramFamily,
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, histogram::Histogram},
};

use crate::worker::Worker;

/// How a copy ended, as `datapath_copy_duration_seconds{result}` names it.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CopyResult {
    /// The destination was committed LEGAL.
    Succeeded,
    /// The copier or the commit failed.
    Failed,
    /// Aborted on request.
    Aborted,
    /// Killed because the host lost its session lease.
    Fenced,
}

impl CopyResult {
    fn label(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Aborted => "aborted",
            Self::Fenced => "fenced",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabel {
    host_id: String,
}

struct HostWorkerMetrics {
    copy_bytes: Counter,
    copy_throughput: Histogram,
    copy_duration: HistogramFamily<ResultLabel>,
    running_jobs: GaugeFamily<HostLabel>,
    job_slots: GaugeFamily<HostLabel>,
    free_job_slots: GaugeFamily<HostLabel>,
    is_spm: GaugeFamily<HostLabel>,
    session_valid: GaugeFamily<HostLabel>,
}

fn metrics() -> &'static HostWorkerMetrics {
    static METRICS: LazyLock<HostWorkerMetrics> = LazyLock::new(|| {
        let m = HostWorkerMetrics {
            copy_bytes: Counter::default(),
            // 1 MB/s to about 8 GB/s, doubling.
            copy_throughput: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1e6, 2.0, 14),
            ),
            copy_duration: HistogramFamily::new_with_constructor(long_histogram),
            running_jobs: Default::default(),
            job_slots: Default::default(),
            free_job_slots: Default::default(),
            is_spm: Default::default(),
            session_valid: Default::default(),
        };
        register(
            "datapath_copy_bytes",
            "Bytes the copier (qemu-img) wrote, measured from its I/O counters while it runs",
            m.copy_bytes.clone(),
        );
        register(
            "datapath_copy_throughput_bytes_per_second",
            "Bytes written per second of copier wall time, one observation per succeeded copy",
            m.copy_throughput.clone(),
        );
        register(
            "datapath_copy_duration_seconds",
            "Wall time of the copier (qemu-img) of each copy, by how the copy ended",
            m.copy_duration.clone(),
        );
        let gauges = [
            (
                "datapath_host_running_jobs",
                "Copies RUNNING on this host",
                &m.running_jobs,
            ),
            (
                "datapath_host_job_slots",
                "Copies this host runs at once at most",
                &m.job_slots,
            ),
            (
                "datapath_host_free_job_slots",
                "Job slots no copy holds",
                &m.free_job_slots,
            ),
            (
                "datapath_host_is_spm",
                "1 while this host is the SPM",
                &m.is_spm,
            ),
            (
                "datapath_host_session_valid",
                "1 while this host holds a valid etcd session lease",
                &m.session_valid,
            ),
        ];
        for (name, help, family) in gauges {
            register(name, help, family.clone());
        }
        for r in [
            CopyResult::Succeeded,
            CopyResult::Failed,
            CopyResult::Aborted,
            CopyResult::Fenced,
        ] {
            drop(
                m.copy_duration
                    .get_or_create(&ResultLabel { result: r.label() }),
            );
        }
        m
    });
    &METRICS
}

/// Publishes `worker`'s slots, role and session as gauges, read at every scrape while it lives.
pub fn watch_host(worker: &Arc<Worker>) {
    let m = metrics();
    let weak: Weak<Worker> = Arc::downgrade(worker);
    on_scrape(move || {
        let Some(w) = weak.upgrade() else { return };
        let host = HostLabel {
            host_id: w.host_id.to_string(),
        };
        let session = *w.session.borrow();
        let (running, _) = w.jobs.load();
        m.running_jobs.get_or_create(&host).set(i64::from(running));
        m.job_slots.get_or_create(&host).set(i64::from(w.job_slots));
        m.free_job_slots
            .get_or_create(&host)
            .set(w.slots.available_permits() as i64);
        m.is_spm
            .get_or_create(&host)
            .set(i64::from(w.spm.is_spm(session)));
        m.session_valid
            .get_or_create(&host)
            .set(i64::from(w.lease_id().is_ok()));
    });
}

/// One copy's measurements: the copier's wall time and the bytes it wrote, counted into
/// `datapath_copy_bytes_total` as the watchdog reports them.
#[derive(Debug, Default)]
pub struct CopyMeter {
    written: AtomicU64,
    copier: Mutex<(Option<Instant>, Option<Duration>)>,
}

impl CopyMeter {
    /// The copier has started.
    pub fn copier_started(&self) {
        *self.copier.lock().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), None);
    }

    /// The copier has ended (exited or was killed).
    pub fn copier_ended(&self) {
        let mut c = self.copier.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(start), None) = *c {
            c.1 = Some(start.elapsed());
        }
    }

    /// The watchdog reported `total` bytes written so far by this copy's copier: the counter moves
    /// by what is new (reports are cumulative, so a lost or repeated one costs nothing).
    pub fn written(&self, total: u64) {
        let before = self.written.fetch_max(total, Ordering::Relaxed);
        if total > before {
            metrics().copy_bytes.inc_by(total - before);
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Records how the copy ended: its duration (if a copier ran) and, for a success with bytes
    /// measured, its throughput.
    pub fn finish(&self, result: CopyResult) {
        self.copier_ended();
        let Some(took) = self.copier.lock().unwrap_or_else(|p| p.into_inner()).1 else {
            return;
        };
        let m = metrics();
        m.copy_duration
            .get_or_create(&ResultLabel {
                result: result.label(),
            })
            .observe(took.as_secs_f64());
        let bytes = self.bytes();
        if result == CopyResult::Succeeded && bytes > 0 && !took.is_zero() {
            m.copy_throughput.observe(bytes as f64 / took.as_secs_f64());
        }
    }
}

/// Registers the families (etcd's too), so they show from the first scrape.
pub fn init() {
    metrics();
    datapath_coord::metrics::metrics();
}

#[cfg(test)]
mod tests {
    use datapath_telemetry::metrics::{encode, text::parse};

    use super::*;

    #[test]
    fn a_copy_counts_new_bytes_once_and_is_timed_by_result() {
        init();
        let total = |s: &datapath_telemetry::metrics::text::Samples| {
            s.sum("datapath_copy_bytes_total", &[])
        };
        let count = |s: &datapath_telemetry::metrics::text::Samples| {
            s.sum(
                "datapath_copy_duration_seconds_count",
                &[("result", "aborted")],
            )
        };
        let before = parse(&encode()).unwrap();
        let meter = CopyMeter::default();
        meter.copier_started();
        meter.written(1000);
        meter.written(1000);
        meter.written(400);
        meter.written(5000);
        meter.finish(CopyResult::Aborted);
        let after = parse(&encode()).unwrap();
        assert_eq!(total(&after) - total(&before), 5000.0);
        assert_eq!(count(&after) - count(&before), 1.0);
        // A job that never started a copier has no copy duration.
        CopyMeter::default().finish(CopyResult::Failed);
        let later = parse(&encode()).unwrap();
        assert_eq!(
            later.sum(
                "datapath_copy_duration_seconds_count",
                &[("result", "failed")]
            ),
            after.sum(
                "datapath_copy_duration_seconds_count",
                &[("result", "failed")]
            )
        );
    }
}
