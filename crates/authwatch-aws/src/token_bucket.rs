//! [`TokenBucket`]: one budget for every CloudWatch Logs call the process makes.
//!
//! The API quotas (aws-notes.md: `FilterLogEvents` and `DescribeLogStreams` 5 TPS) are per
//! account and region, shared with every other reader there; a single bucket in front of all
//! calls keeps authwatch well under them whatever the number of log groups and streams.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<BucketState>,
}

#[derive(Debug)]
struct BucketState {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A bucket that starts full. `rate` must be positive; `burst` is at least one token.
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            1.0
        };
        let burst = burst.max(1.0);
        TokenBucket {
            rate,
            burst,
            state: Mutex::new(BucketState {
                tokens: burst,
                updated: Instant::now(),
            }),
        }
    }

    /// Requests per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Waits until a token is available and takes it.
    ///
    /// The lock is held while sleeping so that waiters are served in turn (tokio's mutex is
    /// fair); nobody can overtake and starve a poller.
    pub async fn acquire(&self) {
        let mut st = self.state.lock().await;
        loop {
            let now = Instant::now();
            let elapsed = now.duration_since(st.updated).as_secs_f64();
            st.tokens = (st.tokens + elapsed * self.rate).min(self.burst);
            st.updated = now;
            if st.tokens >= 1.0 {
                st.tokens -= 1.0;
                return;
            }
            let wait = (1.0 - st.tokens) / self.rate;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spends_the_burst_then_paces_at_the_rate() {
        let bucket = TokenBucket::new(2.0, 2.0);
        let start = Instant::now();
        for _ in 0..6 {
            bucket.acquire().await;
        }
        // 2 from the burst, then 4 more at 2/s = 2 s.
        let took = start.elapsed().as_secs_f64();
        assert!((1.9..2.2).contains(&took), "took {took}s");
    }
}
