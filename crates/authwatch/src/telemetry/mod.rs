//! What authwatch tells about itself: `/healthz`, `/readyz` and `/metrics` ([`http`]), and
//! the CloudWatch metrics it publishes ([`cloudwatch_metrics`]: counts of events, denials and
//! alerts, not alerts; alert receivers are in [`crate::sinks`]).

pub mod cloudwatch_metrics;
pub mod http;
