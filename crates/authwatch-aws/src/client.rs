//! The AWS clients (CloudWatch Logs here; SNS and CloudWatch in the sinks): the SDK's default credential chain and region resolution
//! (environment, profiles, IMDS/ECS/IRSA), with the SDK's own retries off.
//!
//! Retries are ours ([`crate::backoff`]): the SDK's standard mode gives up after three
//! attempts, while a live run must retry for ever and spend every attempt from the shared
//! [`crate::TokenBucket`]. The endpoint is only ever set by the SDK's standard means
//! (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`, profiles).

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_cloudwatchlogs::Client;

/// Client settings.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// `--region`; otherwise the SDK's chain (`AWS_REGION`, profile, IMDS).
    pub region: Option<String>,
    /// Per-attempt timeout (default 20 s).
    pub attempt_timeout: Option<Duration>,
}

/// Loads the shared SDK configuration (credentials, region, endpoint) with our timeouts and
/// the SDK's retries off; every AWS client of authwatch is built from it.
pub async fn sdk_config(cfg: &ClientConfig) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(cfg.attempt_timeout.unwrap_or(Duration::from_secs(20)))
                .build(),
        );
    if let Some(r) = &cfg.region {
        loader = loader.region(Region::new(r.clone()));
    }
    loader.load().await
}

/// Builds a CloudWatch Logs client.
pub async fn build_client(cfg: &ClientConfig) -> Client {
    Client::new(&sdk_config(cfg).await)
}
