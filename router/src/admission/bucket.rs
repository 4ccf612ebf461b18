//! A token bucket: admits on average `rate` events per second with bursts of up to
//! `burst`, and lets callers reserve tokens ahead of time so that waiters are served in
//! arrival order.

use std::time::{Duration, Instant};

/// Slack for rounding in the refill arithmetic. A token that is due by exact arithmetic
/// must not be refused because `rate × elapsed` came out a hair short in binary; the
/// slack never accumulates, because the balance is a running sum that a take may leave
/// at most this far below zero.
const EPSILON: f64 = 1e-9;

/// Rate limiter over an explicit clock.
///
/// The balance may go negative: [`take_or_wait`](Self::take_or_wait) reserves tokens
/// that have not accrued yet, and a later caller's reservation queues behind the
/// earlier ones because it has to wait for the debt to be paid off first. That makes
/// waiting FIFO without keeping a queue.
///
/// A rate of 0 means the bucket never refills. Layers above treat a configured 0 as
/// "unlimited" and do not build a bucket at all; the bucket itself only promises not to
/// divide by zero or panic.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second, finite and ≥ 0.
    rate: f64,
    /// Most tokens the bucket holds, finite and ≥ 1.
    burst: f64,
    /// Tokens on hand; negative while reservations are outstanding. Always finite.
    balance: f64,
    /// When `balance` was last brought up to date. Never moves backwards.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket. A NaN or negative `rate` is taken as 0 and an infinite one as the
    /// largest finite rate. `burst` is at least 1, since a bucket that can never hold a
    /// whole token would refuse everything forever.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = sanitize_burst(burst);
        TokenBucket {
            rate: sanitize_rate(rate),
            burst,
            balance: burst,
            updated: now,
        }
    }

    pub fn rate(&self) -> f64 {
        self.rate
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Tokens on hand at `now` (negative while reservations are outstanding), without
    /// changing anything.
    pub fn tokens(&self, now: Instant) -> f64 {
        let mut copy = self.clone();
        copy.refill(now);
        copy.balance
    }

    /// Takes one token if one is on hand at `now`.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.balance >= 1.0 - EPSILON {
            self.balance -= 1.0;
            true
        } else {
            false
        }
    }

    /// Reserves `n` tokens, driving the balance negative if need be, and returns how
    /// long after `now` the reservation is covered: `Duration::ZERO` if the tokens were
    /// on hand. Callers that wait the returned time proceed in the order they called.
    ///
    /// If the reservation can never be covered (rate 0, or a wait too long to express)
    /// this returns `Duration::MAX` and reserves nothing, so there is nothing to
    /// [`refund`](Self::refund). A NaN or negative `n` is taken as 0.
    pub fn take_or_wait(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        let after = self.balance - sanitize_amount(n);
        if after >= -EPSILON {
            self.balance = after;
            return Duration::ZERO;
        }
        if !after.is_finite() || self.rate == 0.0 {
            return Duration::MAX;
        }
        match ceil_duration(-after / self.rate) {
            Some(wait) => {
                self.balance = after;
                wait
            }
            None => Duration::MAX,
        }
    }

    /// Gives back `n` tokens of a reservation that was abandoned (a waiter that timed
    /// out or disconnected), so the callers queued behind it move up. Capped at the
    /// burst: a refund never creates more room than the bucket has.
    pub fn refund(&mut self, n: f64) {
        self.balance = (self.balance + sanitize_amount(n)).min(self.burst);
    }

    /// Changes the rate and burst live. Time up to `now` is credited at the old rate;
    /// the balance is then clamped to the new burst. Outstanding reservations stay, and
    /// are paid off at the new rate.
    pub fn set_rate(&mut self, rate: f64, burst: f64, now: Instant) {
        self.refill(now);
        self.rate = sanitize_rate(rate);
        self.burst = sanitize_burst(burst);
        self.balance = self.balance.min(self.burst);
    }

    /// Credits the tokens accrued since the last update. A `now` earlier than that (the
    /// caller's clock reads raced) counts as no time passing.
    fn refill(&mut self, now: Instant) {
        let Some(elapsed) = now.checked_duration_since(self.updated) else {
            return;
        };
        self.updated = now;
        if self.rate > 0.0 {
            // Finite rate × finite seconds is never NaN; it may overflow to +inf,
            // which the `min` turns back into `burst`.
            self.balance = (self.balance + self.rate * elapsed.as_secs_f64()).min(self.burst);
        }
    }
}

fn sanitize_rate(rate: f64) -> f64 {
    if rate.is_nan() || rate <= 0.0 {
        0.0
    } else {
        rate.min(f64::MAX)
    }
}

fn sanitize_burst(burst: f64) -> f64 {
    if burst.is_nan() {
        1.0
    } else {
        burst.clamp(1.0, f64::MAX)
    }
}

fn sanitize_amount(n: f64) -> f64 {
    if n.is_nan() || n < 0.0 {
        0.0
    } else {
        n
    }
}

/// `secs` as a Duration rounded up to the nanosecond, so that a caller who waits
/// exactly that long finds its reservation covered. None if it does not fit.
fn ceil_duration(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    let nanos = (secs * 1e9).ceil();
    if nanos < u64::MAX as f64 {
        Some(Duration::from_nanos(nanos as u64))
    } else {
        Duration::try_from_secs_f64(secs).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starts_full_and_refills_at_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 3.0, t0);
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + ms(99)));
        assert!(b.try_take(t0 + ms(100)));
        assert!(!b.try_take(t0 + ms(100)));
        // A long idle spell refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert!((b.tokens(later) - 3.0).abs() < 1e-9);
        for _ in 0..3 {
            assert!(b.try_take(later));
        }
        assert!(!b.try_take(later));
    }

    #[test]
    fn an_earlier_now_counts_as_no_time() {
        let t0 = Instant::now();
        let t1 = t0 + ms(500);
        let mut b = TokenBucket::new(1.0, 1.0, t0);
        assert!(b.try_take(t1));
        assert!(!b.try_take(t0));
        // The clock did not move backwards for the bucket: a second after t1, not t0.
        assert!(!b.try_take(t1 + ms(999)));
        assert!(b.try_take(t1 + ms(1000)));
    }

    #[test]
    fn waits_are_fifo_and_exact() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 2.0, t0);
        assert_eq!(b.take_or_wait(1.0, t0), Duration::ZERO);
        assert_eq!(b.take_or_wait(1.0, t0), Duration::ZERO);
        assert_eq!(b.take_or_wait(1.0, t0), ms(100));
        assert_eq!(b.take_or_wait(1.0, t0), ms(200));
        // 50ms later, the next in line waits for the two ahead of it and its own token.
        assert_eq!(b.take_or_wait(1.0, t0 + ms(50)), ms(250));
        // Nobody may jump the queue while reservations are outstanding.
        assert!(!b.try_take(t0 + ms(250)));
        assert!(b.try_take(t0 + ms(400)));
    }

    #[test]
    fn refunds_move_the_queue_up_but_never_past_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, 2.0, t0);
        assert_eq!(b.take_or_wait(3.0, t0), Duration::from_secs(1));
        b.refund(3.0);
        assert!((b.tokens(t0) - 2.0).abs() < 1e-9);
        b.refund(100.0);
        assert!((b.tokens(t0) - 2.0).abs() < 1e-9);
    }

    #[test]
    fn rate_zero_never_refills_and_never_divides() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.0, 1.0, t0);
        assert_eq!(b.take_or_wait(1.0, t0), Duration::ZERO);
        assert_eq!(b.take_or_wait(1.0, t0), Duration::MAX);
        // Nothing was reserved by the refused call.
        assert!(b.tokens(t0).abs() < 1e-9);
        assert!(!b.try_take(t0 + Duration::from_secs(3600)));
    }

    #[test]
    fn set_rate_credits_the_old_rate_first_and_clamps() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1.0, 10.0, t0);
        for _ in 0..10 {
            assert!(b.try_take(t0));
        }
        // Two seconds at 1/s, then 100/s.
        b.set_rate(100.0, 10.0, t0 + Duration::from_secs(2));
        assert!((b.tokens(t0 + Duration::from_secs(2)) - 2.0).abs() < 1e-9);
        assert!((b.tokens(t0 + ms(2050)) - 7.0).abs() < 1e-9);
        // Shrinking the burst clamps what is on hand.
        b.set_rate(100.0, 3.0, t0 + Duration::from_secs(10));
        assert!((b.tokens(t0 + Duration::from_secs(10)) - 3.0).abs() < 1e-9);
        assert_eq!(b.burst(), 3.0);
        assert_eq!(b.rate(), 100.0);
    }

    #[test]
    fn odd_inputs_are_clamped_not_fatal() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(f64::NAN, f64::NAN, t0);
        assert_eq!((b.rate(), b.burst()), (0.0, 1.0));
        b.set_rate(-5.0, -5.0, t0);
        assert_eq!((b.rate(), b.burst()), (0.0, 1.0));
        b.set_rate(f64::INFINITY, f64::INFINITY, t0);
        assert_eq!((b.rate(), b.burst()), (f64::MAX, f64::MAX));
        assert!(b.try_take(t0 + Duration::from_secs(1)));
        assert_eq!(b.take_or_wait(f64::INFINITY, t0), Duration::MAX);
        assert_eq!(b.take_or_wait(f64::NAN, t0), Duration::ZERO);
        b.refund(f64::NAN);
        b.refund(-1.0);
        b.refund(f64::INFINITY);

        // A tiny rate makes waits too long to express: refused, nothing reserved.
        let mut slow = TokenBucket::new(1e-300, 1.0, t0);
        assert!(slow.try_take(t0));
        assert_eq!(slow.take_or_wait(1.0, t0), Duration::MAX);
        assert!(slow.tokens(t0).abs() < 1e-9);
        // Huge reservations at a huge rate are still finite.
        let mut fast = TokenBucket::new(f64::MAX, 1.0, t0);
        assert!(fast.take_or_wait(f64::MAX, t0) <= Duration::from_secs(1));
        let much_later = t0 + Duration::from_secs(u32::MAX.into());
        assert!(fast.take_or_wait(f64::MAX, much_later) <= Duration::from_secs(1));
        assert!(fast.tokens(much_later).is_finite());
    }

    /// Sorted arrival offsets within ten simulated seconds.
    fn arrivals() -> impl Strategy<Value = Vec<u64>> {
        proptest::collection::vec(0u64..10_000_000_000, 1..2000).prop_map(|mut v| {
            v.sort_unstable();
            v
        })
    }

    proptest! {
        #[test]
        fn never_admits_more_than_rate_times_elapsed_plus_burst(
            rate in 1.0f64..1000.0,
            burst in 1.0f64..2000.0,
            times in arrivals(),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let mut admitted = 0u64;
            for &at in &times {
                if b.try_take(t0 + Duration::from_nanos(at)) {
                    admitted += 1;
                }
                let bound = rate * (at as f64 / 1e9) + burst + 1e-6;
                prop_assert!(admitted as f64 <= bound, "{admitted} > {bound}");
            }
        }

        /// Arrivals at least as often as tokens accrue are admitted at the full rate:
        /// with a burst of 2 or more no accrued token ever overflows the bucket.
        #[test]
        fn admits_at_the_rate_when_arrivals_keep_up(
            rate in 1.0f64..1000.0,
            burst in 2.0f64..2000.0,
            gaps in proptest::collection::vec(0.0f64..=1.0, 1..3000),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let (mut at, mut admitted) = (0u64, 0u64);
            for g in gaps {
                // Each gap is at most one token's worth of time.
                at += (g / rate * 1e9).floor() as u64;
                if b.try_take(t0 + Duration::from_nanos(at)) {
                    admitted += 1;
                }
                let elapsed = at as f64 / 1e9;
                prop_assert!(admitted as f64 >= rate * elapsed - 1.0);
            }
        }

        /// With a burst under 2 a token can overflow between arrivals, so the rate is
        /// met only up to the arrival spacing: one admission per 1/rate + largest gap.
        #[test]
        fn small_bursts_lose_at_most_one_gap_per_admission(
            rate in 1.0f64..1000.0,
            burst in 1.0f64..2.0,
            spacing in 0.01f64..=1.0,
            steps in 1usize..3000,
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let gap = (spacing / rate * 1e9).floor() as u64;
            let (mut at, mut admitted) = (0u64, 0u64);
            for _ in 0..steps {
                if b.try_take(t0 + Duration::from_nanos(at)) {
                    admitted += 1;
                }
                let elapsed = at as f64 / 1e9;
                let per_admission = 1.0 / rate + gap as f64 / 1e9;
                prop_assert!(admitted as f64 >= elapsed / per_admission - 1.0);
                at += gap;
            }
        }

        #[test]
        fn waiting_callers_proceed_in_order_and_at_the_rate(
            rate in 1.0f64..1000.0,
            burst in 1.0f64..2000.0,
            times in arrivals(),
            sizes in proptest::collection::vec(1u8..=3, 2000),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let mut proceeds: Vec<(Duration, f64)> = Vec::new();
            for (&at, &n) in times.iter().zip(&sizes) {
                let at = Duration::from_nanos(at);
                let wait = b.take_or_wait(f64::from(n), t0 + at);
                prop_assert!(wait != Duration::MAX);
                let go = at + wait;
                if let Some(&(last, _)) = proceeds.last() {
                    prop_assert!(go >= last, "caller proceeds at {go:?} before {last:?}");
                }
                proceeds.push((go, f64::from(n)));
            }
            // Tokens handed out by each proceed time stay within rate × t + burst.
            let mut taken = 0.0;
            for &(go, n) in &proceeds {
                taken += n;
                let bound = rate * go.as_secs_f64() + burst + 1e-6;
                prop_assert!(taken <= bound, "{taken} > {bound} at {go:?}");
            }
        }
    }
}
