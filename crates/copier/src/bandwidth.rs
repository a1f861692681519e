//! A token bucket shared by the copies of one host: the host's link is one budget, so a copy alone
//! gets all of it and two running copies get half each (work-conserving), where a static split per
//! job slot (`qemu-img -r`) leaves a lone copy with a slot's share. A copy takes from every bucket
//! it is under (the host's, and its own per-copy limit if set) before each piece it reads.
use std::{sync::Mutex, time::Duration};

use tokio::time::Instant;

/// Bytes per second, shared by whoever takes from it.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// Tokens now; below zero, the debt of reservations already handed out.
    tokens: f64,
    at: Instant,
}

/// How much unused budget may pile up: a tenth of a second's worth.
const BURST: Duration = Duration::from_millis(100);

impl TokenBucket {
    /// A bucket of `bytes_per_second` (at least 1), starting full.
    pub fn new(bytes_per_second: u64) -> Self {
        let rate = bytes_per_second.max(1) as f64;
        let burst = rate * BURST.as_secs_f64();
        Self {
            rate,
            burst,
            state: Mutex::new(State {
                tokens: burst,
                at: Instant::now(),
            }),
        }
    }

    /// The bucket's rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Takes `n` bytes, waiting until the bucket has paid for them. Each taker reserves at once,
    /// so takers are served in the order they ask (a copy with many pieces in flight gets its
    /// share by asking more often, never by starving another); a taker given up on while waiting
    /// leaves its reservation spent.
    pub async fn take(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().expect("bucket lock");
            let now = Instant::now();
            let refill = now.duration_since(s.at).as_secs_f64() * self.rate;
            s.tokens = (s.tokens + refill).min(self.burst);
            s.at = now;
            s.tokens -= n as f64;
            (s.tokens < 0.0).then(|| Duration::from_secs_f64(-s.tokens / self.rate))
        };
        if let Some(w) = wait {
            tokio::time::sleep(w).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    };

    use super::*;

    const MIB: u64 = 1 << 20;

    #[tokio::test(start_paused = true)]
    async fn one_taker_alone_gets_the_whole_rate() {
        let bucket = TokenBucket::new(10 * MIB);
        let start = Instant::now();
        for _ in 0..100 {
            bucket.take(MIB).await;
        }
        let took = start.elapsed().as_secs_f64();
        // 100 MiB at 10 MiB/s, less the tenth of a second the bucket starts with.
        assert!((9.8..=10.0).contains(&took), "{took}");
    }

    #[tokio::test(start_paused = true)]
    async fn two_takers_share_it_evenly_and_one_left_alone_speeds_up() {
        let bucket = Arc::new(TokenBucket::new(10 * MIB));
        let done: [Arc<AtomicU64>; 2] = Default::default();
        let mut tasks = Vec::new();
        for (i, pieces) in [(0usize, 60u64), (1, 20)] {
            let (bucket, done) = (bucket.clone(), done[i].clone());
            tasks.push(tokio::spawn(async move {
                for _ in 0..pieces {
                    bucket.take(MIB).await;
                    done.fetch_add(MIB, Ordering::SeqCst);
                }
                Instant::now()
            }));
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (a, b) = (
            done[0].load(Ordering::SeqCst),
            done[1].load(Ordering::SeqCst),
        );
        assert!(a.abs_diff(b) <= 2 * MIB, "uneven shares: {a} and {b}");
        assert!(
            a + b >= 29 * MIB,
            "the two used less than the rate: {}",
            a + b
        );
        let start = Instant::now() - Duration::from_secs(3);
        let short = tasks.remove(1).await.unwrap();
        let long = tasks.remove(0).await.unwrap();
        // 20 MiB each at half the rate take ~4 s; the 40 MiB left then go at the whole rate.
        let (short, long) = ((short - start).as_secs_f64(), (long - start).as_secs_f64());
        assert!((3.7..=4.2).contains(&short), "{short}");
        assert!((7.7..=8.1).contains(&long), "{long}");
    }
}
