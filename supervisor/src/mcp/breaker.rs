//! Per-tool circuit breaker: after `threshold` consecutive failures the
//! tool fails fast for `cooldown`; then one probe call goes through, and
//! its outcome closes the breaker or opens it again.

use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe is out; others fail fast until it answers (or until
    /// another cooldown passes, in case its answer never comes).
    HalfOpen {
        since: Instant,
    },
}

#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: State,
}

/// Whether a call may go out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    Closed,
    /// This call is the half-open probe.
    Probe,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker { threshold: threshold.max(1), cooldown, state: State::Closed { failures: 0 } }
    }

    /// Admits a call, or says how long until the next probe may go.
    pub fn admit(&mut self, now: Instant) -> Result<Admit, Duration> {
        match self.state {
            State::Closed { .. } => Ok(Admit::Closed),
            State::Open { until } if now < until => Err(until - now),
            State::HalfOpen { since } if now < since + self.cooldown => Err(since + self.cooldown - now),
            State::Open { .. } | State::HalfOpen { .. } => {
                self.state = State::HalfOpen { since: now };
                Ok(Admit::Probe)
            }
        }
    }

    /// The outcome of an admitted call.
    pub fn record(&mut self, success: bool, now: Instant) {
        self.state = match (self.state, success) {
            (_, true) => State::Closed { failures: 0 },
            (State::Closed { failures }, false) if failures + 1 < self.threshold => {
                State::Closed { failures: failures + 1 }
            }
            (State::Closed { .. } | State::HalfOpen { .. }, false) => State::Open { until: now + self.cooldown },
            // A late failure while open (a call admitted before it opened) changes nothing.
            (open @ State::Open { .. }, false) => open,
        };
    }

    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Closed { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_after_threshold_probes_and_recovers() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = Breaker::new(5, Duration::from_secs(30));
        for _ in 0..4 {
            assert_eq!(b.admit(t0), Ok(Admit::Closed));
            b.record(false, t0);
        }
        // A success resets the count.
        b.record(true, t0);
        for _ in 0..5 {
            assert_eq!(b.admit(t0), Ok(Admit::Closed));
            b.record(false, t0);
        }
        assert!(b.is_open());
        assert_eq!(b.admit(t0 + s), Err(Duration::from_secs(29)));
        // After the cooldown: one probe, the others wait for it.
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.admit(t1), Ok(Admit::Probe));
        assert!(b.admit(t1 + s).is_err());
        // The probe fails: open again for a full cooldown.
        b.record(false, t1 + s);
        assert!(b.admit(t1 + Duration::from_secs(30)).is_err());
        let t2 = t1 + s + Duration::from_secs(30);
        assert_eq!(b.admit(t2), Ok(Admit::Probe));
        b.record(true, t2);
        assert!(!b.is_open());
        assert_eq!(b.admit(t2), Ok(Admit::Closed));
    }

    #[test]
    fn a_lost_probe_does_not_wedge_the_breaker() {
        let t0 = Instant::now();
        let mut b = Breaker::new(1, Duration::from_secs(10));
        b.record(false, t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.admit(t1), Ok(Admit::Probe));
        assert!(b.admit(t1 + Duration::from_secs(9)).is_err());
        assert_eq!(b.admit(t1 + Duration::from_secs(10)), Ok(Admit::Probe));
    }
}
