//! The one clock: Redis's. The scripts read Redis's `TIME` for every
//! decision that depends on time (a sale open or closed, record times); this
//! module keeps each instance's estimate of that clock, so that it also
//! schedules by Redis's time and not by its own wall clock: the sale the
//! cores pick, the sales the rotator prepares, when the writer tries to close
//! a sale out, the times of checkout records.
//!
//! The rotator measures the offset about once a second (`TIME`, the best of a
//! few round trips, each corrected by half its round trip). Between
//! measurements the estimate runs on the monotonic clock, so a step of the
//! local wall clock moves it only until the next measurement. Before the
//! first measurement the estimate is the local wall clock.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, ErrorKind, Result};
use crate::redis_client::blocking::BlockingRedis;

/// An offset of the local wall clock from Redis's past this is logged as a
/// warning (and its return below it as info). Scheduling corrects for any
/// offset; a large one still means the host's time service is broken.
pub const OFFSET_WARN: Duration = Duration::from_secs(1);
/// Round trips per measurement; the shortest one is kept.
const SAMPLES: usize = 3;

/// This instance's estimate of Redis's clock, shared by every thread.
#[derive(Debug)]
pub struct RedisClock {
    /// The monotonic origin of the estimate.
    origin: Instant,
    /// Redis's Unix time (µs) at `origin`, by the last measurement.
    redis_at_origin_us: AtomicI64,
    /// Redis's clock minus the local wall clock (µs), by the last measurement.
    wall_offset_us: AtomicI64,
    /// Whether the offset is past `OFFSET_WARN` (so the warning is logged once).
    off: AtomicBool,
}

/// One measurement of Redis's clock against the local ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Redis's `TIME` (Unix µs).
    pub redis_us: i64,
    /// The local wall clock (Unix µs) half way through the round trip.
    pub wall_us: i64,
    /// Microseconds since the clock's origin, half way through the round trip.
    pub mono_us: i64,
    /// The round trip (µs).
    pub rtt_us: i64,
}

impl Default for RedisClock {
    fn default() -> Self {
        Self::new()
    }
}

impl RedisClock {
    /// An estimate that is the local wall clock until the first measurement.
    pub fn new() -> Self {
        let origin = Instant::now();
        RedisClock {
            origin,
            redis_at_origin_us: AtomicI64::new(wall_clock_us()),
            wall_offset_us: AtomicI64::new(0),
            off: AtomicBool::new(false),
        }
    }

    /// Redis's Unix time in milliseconds, as this instance estimates it.
    pub fn now_ms(&self) -> i64 {
        self.now_us().div_euclid(1000)
    }

    fn now_us(&self) -> i64 {
        self.redis_at_origin_us.load(Ordering::Relaxed) + self.mono_us()
    }

    fn mono_us(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_micros()).unwrap_or(i64::MAX)
    }

    /// Redis's clock minus the local wall clock (µs), by the last measurement.
    #[cfg(test)]
    fn wall_offset_us(&self) -> i64 {
        self.wall_offset_us.load(Ordering::Relaxed)
    }

    /// Measures Redis's clock over `con` and adopts the result. On a Redis
    /// Cluster every sample asks the same node: the master that owns
    /// `anchor` (a key), so that the round trips compare.
    pub fn measure(&self, con: &mut BlockingRedis, anchor: &str) -> Result<Sample> {
        let mut best: Option<Sample> = None;
        for _ in 0..SAMPLES {
            let wall_before = wall_clock_us();
            let mono_before = self.mono_us();
            let (secs, micros): (i64, i64) = con.query_at(anchor, &redis::cmd("TIME"))?;
            let rtt_us = self.mono_us() - mono_before;
            let sample = Sample {
                redis_us: secs
                    .checked_mul(1_000_000)
                    .and_then(|us| us.checked_add(micros))
                    .ok_or_else(|| Error::new(ErrorKind::RedisProtocol, "TIME out of range"))?,
                wall_us: wall_before + rtt_us / 2,
                mono_us: mono_before + rtt_us / 2,
                rtt_us,
            };
            if best.is_none_or(|b| sample.rtt_us < b.rtt_us) {
                best = Some(sample);
            }
        }
        let sample = best.ok_or_else(|| Error::new(ErrorKind::Internal, "no clock sample"))?;
        self.adopt(sample);
        Ok(sample)
    }

    /// Takes `sample` as the new estimate; logs an offset past `OFFSET_WARN`
    /// (once, and when it is back) and exports it as a metric.
    pub fn adopt(&self, sample: Sample) {
        self.redis_at_origin_us
            .store(sample.redis_us - sample.mono_us, Ordering::Relaxed);
        let offset_us = sample.redis_us - sample.wall_us;
        self.wall_offset_us.store(offset_us, Ordering::Relaxed);
        crate::metrics::registry().set_clock_offset_us(offset_us);
        let off = offset_us.unsigned_abs() > OFFSET_WARN.as_micros() as u64;
        if off != self.off.swap(off, Ordering::Relaxed) {
            let offset_ms = offset_us as f64 / 1000.0;
            if off {
                tracing::warn!(
                    offset_ms,
                    rtt_us = sample.rtt_us,
                    "this instance's clock is off from Redis's (offset = Redis minus local); \
                     sales follow Redis's clock, but check the host's time service"
                );
            } else {
                tracing::info!(offset_ms, "this instance's clock agrees with Redis's again");
            }
        }
    }
}

/// The local wall clock, Unix µs.
fn wall_clock_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_measured_clock_on_the_monotonic_one() {
        let clock = RedisClock::new();
        // Before any measurement: the local wall clock.
        assert!((clock.now_ms() - wall_clock_us() / 1000).abs() < 1_000);
        // Redis 90 s ahead of the local wall clock.
        let mono_us = clock.mono_us();
        let wall_us = wall_clock_us();
        clock.adopt(Sample {
            redis_us: wall_us + 90_000_000,
            wall_us,
            mono_us,
            rtt_us: 100,
        });
        assert_eq!(clock.wall_offset_us(), 90_000_000);
        let estimate = clock.now_ms();
        let expected = (wall_us + 90_000_000 + clock.mono_us() - mono_us) / 1000;
        assert!((estimate - expected).abs() <= 1, "{estimate} vs {expected}");
        std::thread::sleep(Duration::from_millis(20));
        assert!(clock.now_ms() >= estimate + 20);
    }
}
