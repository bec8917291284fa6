//! The AWS API calls authwatch makes, as IAM actions: the one list that the policies in
//! `docker/iam/` are checked against (`tests/service_image.rs`), and that the test checks
//! against the SDK calls in the source.

/// `authwatch run`: read the log group, publish notifications, put metrics.
pub const RUN_ACTIONS: &[&str] = &[
    "logs:DescribeLogStreams",
    "logs:FilterLogEvents",
    "sns:Publish",
    "cloudwatch:PutMetricData",
];

/// `authwatch run --kinesis-stream` (issue #10), in addition to [`RUN_ACTIONS`]' SNS and
/// CloudWatch: read the subscription stream, write and read the match stream, and keep the
/// shard leases in the DynamoDB lease table and the alert claims in the table beside it
/// (both created if missing, the claims with a time to live).
pub const KINESIS_RUN_ACTIONS: &[&str] = &[
    "kinesis:ListShards",
    "kinesis:GetShardIterator",
    "kinesis:GetRecords",
    "kinesis:PutRecords",
    "dynamodb:CreateTable",
    "dynamodb:DescribeTable",
    "dynamodb:PutItem",
    "dynamodb:GetItem",
    "dynamodb:UpdateItem",
    "dynamodb:Scan",
    "dynamodb:UpdateTimeToLive",
];

/// `authwatch alarms sync`.
pub const ALARMS_SYNC_ACTIONS: &[&str] = &[
    "cloudwatch:DescribeAlarms",
    "cloudwatch:PutMetricAlarm",
    "cloudwatch:TagResource",
    "cloudwatch:ListTagsForResource",
    "cloudwatch:DeleteAlarms",
];

/// The IAM action of an SDK client method (`publish_batch` is authorized as `sns:Publish`).
pub fn action_of(service: &str, method: &str) -> String {
    if service == "sns" && method == "publish_batch" {
        return "sns:Publish".into();
    }
    let pascal: String = method
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    format!("{service}:{pascal}")
}
