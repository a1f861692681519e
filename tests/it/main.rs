//! End-to-end tests: real etcd, the real job-tracker and host-worker binaries as separate processes,
//! real qemu-img on real files. Build the binaries first (`cargo build --workspace --bins`).
mod bad_input;
mod chaos;
mod clone_disk;
mod copy;
mod disks;
mod dpctl_disks;
mod faults;
mod fence;
mod harness;
mod invariants;
mod job_tracker;
mod metrics;
mod move_disk;
mod network;
mod placement;
mod scheduler_bad_input;
mod scheduler_failpoints;
mod scheduler_faults;
mod scheduler_ha;
mod scheduler_locks;
mod spm;
mod storage;
mod telemetry;
