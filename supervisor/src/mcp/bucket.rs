//! Per-tool rate limit: a token bucket of `burst` tokens refilled at
//! `burst` per period. Time is passed in, so tests need no sleeping.

use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    /// Tokens per millisecond.
    refill: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(burst: u32, per_ms: u64, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        TokenBucket { capacity, tokens: capacity, refill: capacity / per_ms.max(1) as f64, last: now }
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64() * 1000.0;
        self.tokens = (self.tokens + elapsed * self.refill).min(self.capacity);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let ms = ((1.0 - self.tokens) / self.refill).ceil();
        Err(Duration::from_millis(ms as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(3, 3000, t0);
        for _ in 0..3 {
            b.take(t0).unwrap();
        }
        let wait = b.take(t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1000));
        assert!(b.take(t0 + Duration::from_millis(500)).is_err());
        b.take(t0 + Duration::from_millis(1000)).unwrap();
        // A long idle time refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            b.take(later).unwrap();
        }
        assert!(b.take(later).is_err());
    }
}
