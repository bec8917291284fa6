//! Retrying CloudWatch Logs calls: which errors are worth retrying and how long to wait.
//!
//! The SDK's own retries are switched off (see [`crate::client`]) so that every attempt goes
//! through the shared [`crate::TokenBucket`] and a live run can retry forever without the
//! SDK giving up after three attempts.

use std::time::Duration;

use aws_sdk_cloudwatchlogs::config::http::HttpResponse;
use aws_sdk_cloudwatchlogs::error::{ProvideErrorMetadata, SdkError};
use rand::Rng;

/// What an API error means for the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Throttling, 5xx, timeouts, connection failures: retry soon with backoff.
    Transient(String),
    /// The credentials may not do this: retry slowly and tell the operator which permission.
    Unauthorized(String),
    /// The log group (or stream) does not exist: retry slowly, it may be created.
    NotFound(String),
    /// A request the service rejects as malformed; retrying will not help, but a live run
    /// still retries slowly rather than exiting.
    Permanent(String),
}

impl ErrorClass {
    /// Whether fast exponential backoff applies.
    pub fn is_transient(&self) -> bool {
        matches!(self, ErrorClass::Transient(_))
    }

    /// The human-readable description.
    pub fn detail(&self) -> &str {
        match self {
            ErrorClass::Transient(s)
            | ErrorClass::Unauthorized(s)
            | ErrorClass::NotFound(s)
            | ErrorClass::Permanent(s) => s,
        }
    }
}

/// Classifies an SDK error from any CloudWatch Logs operation.
pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> ErrorClass
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let text = format!(
        "{}",
        aws_sdk_cloudwatchlogs::error::DisplayErrorContext(err)
    );
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            ErrorClass::Transient(text)
        }
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("");
            let status = se.raw().status().as_u16();
            // Request ids and raw bodies would make every report different; keep the gist.
            let short = format!(
                "HTTP {status} {code}: {}",
                se.err().message().unwrap_or("(no message)")
            );
            classify_code(code, Some(status), short)
        }
        _ => ErrorClass::Transient(text),
    }
}

/// Classification by error code and HTTP status (split out for unit tests).
pub fn classify_code(code: &str, status: Option<u16>, text: String) -> ErrorClass {
    match code {
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        // Kinesis's per-shard read/write limits and DynamoDB's capacity limits.
        | "ProvisionedThroughputExceededException"
        | "LimitExceededException"
        | "ServiceUnavailableException"
        | "ServiceUnavailable"
        | "InternalFailure"
        | "RequestTimeout"
        | "RequestTimeoutException" => ErrorClass::Transient(text),
        "AccessDeniedException"
        | "AccessDenied"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "ExpiredToken"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "MissingAuthenticationToken" => ErrorClass::Unauthorized(text),
        "ResourceNotFoundException" => ErrorClass::NotFound(text),
        _ => match status {
            Some(s) if s >= 500 || s == 429 => ErrorClass::Transient(text),
            Some(401) | Some(403) => ErrorClass::Unauthorized(text),
            _ => ErrorClass::Permanent(text),
        },
    }
}

/// Exponential backoff with full jitter: attempt n waits a uniform time in
/// `[0, min(cap, base · 2ⁿ)]` (the AWS Architecture Blog's "full jitter"), so many readers
/// throttled at once do not retry in lock-step.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff starting at `base`, never above `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let max = exp.as_secs_f64();
        Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..=max))
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_classes() {
        let t = |c: &str, s| classify_code(c, s, String::new());
        assert!(t("ThrottlingException", Some(400)).is_transient());
        assert!(t("", Some(500)).is_transient());
        assert!(t("", Some(503)).is_transient());
        assert!(t("ProvisionedThroughputExceededException", Some(400)).is_transient());
        assert_eq!(
            t("AccessDeniedException", Some(400)),
            ErrorClass::Unauthorized(String::new())
        );
        assert_eq!(
            t("ResourceNotFoundException", Some(400)),
            ErrorClass::NotFound(String::new())
        );
        assert_eq!(
            t("InvalidParameterException", Some(400)),
            ErrorClass::Permanent(String::new())
        );
    }

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for n in 0..30u32 {
            let d = b.next_delay();
            let bound = Duration::from_millis(100)
                .saturating_mul(1 << n.min(20))
                .min(Duration::from_secs(2));
            assert!(d <= bound, "attempt {n}: {d:?} > {bound:?}");
        }
        assert_eq!(b.attempts(), 30);
        b.reset();
        assert_eq!(b.attempts(), 0);
    }
}
