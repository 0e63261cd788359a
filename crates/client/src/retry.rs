//! Retrying retryable errors with exponential backoff and full jitter.

use std::future::Future;
use std::time::Duration;

use rand::Rng;

use crate::error::ClientError;

/// When and how often a failed request is tried again. Only errors for
/// which [`ClientError::is_retryable`] holds are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all, the first included; 0 counts as 1.
    pub max_attempts: u32,
    /// The backoff cap before the first retry; it doubles per retry.
    pub base_delay: Duration,
    /// No wait is longer than this, a server's `retry_after` included.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// Tries once, never retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The wait before retry number `retry` (0 for the first) when the
    /// server gave no hint: uniform in `[0, min(max_delay, base_delay *
    /// 2^retry)]` ("full jitter"), so clients that failed together do not
    /// come back together.
    pub fn backoff(&self, retry: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(retry.min(31)))
            .min(self.max_delay);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// The wait before retry number `retry` after `err`: the server's
    /// `retry_after` when it gave one, capped by `max_delay`, else
    /// [`RetryPolicy::backoff`].
    pub fn delay_for(&self, retry: u32, err: &ClientError) -> Duration {
        match err.retry_after() {
            Some(d) if !d.is_zero() => d.min(self.max_delay),
            _ => self.backoff(retry),
        }
    }

    /// Runs `op` until it succeeds, fails with an error that is not
    /// retryable, or has been tried `max_attempts` times; returns the last
    /// result.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let attempts = self.max_attempts.max(1);
        let mut retry = 0;
        loop {
            match op().await {
                Err(err) if err.is_retryable() && retry + 1 < attempts => {
                    tokio::time::sleep(self.delay_for(retry, &err)).await;
                    retry += 1;
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardline_api::{ApiError, ErrorCode};
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
        }
    }

    #[test]
    fn backoff_stays_under_its_cap() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(100),
        };
        for retry in 0..40 {
            let cap = Duration::from_millis(10 * 2u64.pow(retry.min(20))).min(p.max_delay);
            for _ in 0..20 {
                assert!(p.backoff(retry) <= cap);
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_secs(5),
        };
        let err = |secs| ClientError::Api {
            status: 503,
            error: Box::new(ApiError::new(ErrorCode::Unavailable, "x").with_retry_after(secs)),
        };
        assert_eq!(p.delay_for(0, &err(2)), Duration::from_secs(2));
        assert_eq!(p.delay_for(0, &err(60)), Duration::from_secs(5));
        assert!(p.delay_for(0, &err(0)) <= Duration::from_millis(1));
    }

    #[tokio::test]
    async fn connect_errors_are_retried_up_to_max_attempts() {
        let calls = AtomicU32::new(0);
        let res: Result<(), _> = fast(4)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ClientError::Connect("refused".into()))
            })
            .await;
        assert!(matches!(res, Err(ClientError::Connect(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn non_retryable_errors_are_not_retried() {
        for err in [
            ClientError::Timeout,
            ClientError::Transport("reset".into()),
            ClientError::Api {
                status: 400,
                error: Box::new(ApiError::new(ErrorCode::InvalidRequest, "bad")),
            },
        ] {
            let calls = AtomicU32::new(0);
            let mut err = Some(err);
            let res: Result<(), _> = fast(5)
                .run(|| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let e = err.take().unwrap();
                    async move { Err(e) }
                })
                .await;
            assert!(res.is_err());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn stops_retrying_on_success() {
        let calls = AtomicU32::new(0);
        let res = fast(5)
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(ClientError::Connect("refused".into()))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(res.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn zero_attempts_means_one() {
        let calls = AtomicU32::new(0);
        let _: Result<(), _> = fast(0)
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err(ClientError::Connect("refused".into()))
            })
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
