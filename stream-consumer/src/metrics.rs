//! Metrics as CloudWatch Embedded Metric Format: one JSON line per batch on stdout, which
//! Lambda's log ingestion turns into metrics in namespace `FlagsmithEdge` (no agent, no extra
//! API call). Published twice: without dimensions (what the stack's alarms watch) and by
//! `Region`.

use serde_json::{json, Value};

use crate::handler::BatchReport;

pub const NAMESPACE: &str = "FlagsmithEdge";

/// The EMF document of one batch.
pub fn emf(region: &str, report: &BatchReport, timestamp_ms: i64) -> Value {
    // EMF takes up to 100 values per metric in one document.
    let mut lags: Vec<f64> = report
        .lags_ms
        .iter()
        .map(|ms| *ms as f64 / 1000.0)
        .collect();
    if lags.len() > 100 {
        lags.sort_by(f64::total_cmp);
        let step = lags.len() as f64 / 100.0;
        lags = (0..100).map(|i| lags[(i as f64 * step) as usize]).collect();
    }
    json!({
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": NAMESPACE,
                "Dimensions": [[], ["Region"]],
                "Metrics": [
                    {"Name": "ReplicationLagSeconds", "Unit": "Seconds"},
                    {"Name": "RecordsVerified", "Unit": "Count"},
                    {"Name": "VerificationFailures", "Unit": "Count"},
                    {"Name": "InvalidationFailures", "Unit": "Count"},
                ],
            }],
        },
        "Region": region,
        "ReplicationLagSeconds": lags,
        "RecordsVerified": report.verified + report.removals,
        "VerificationFailures": u8::from(report.failure.is_some()),
        "InvalidationFailures": report.invalidation_failures.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_becomes_one_emf_document() {
        let report = BatchReport {
            verified: 2,
            lags_ms: vec![1500, 250],
            ..BatchReport::default()
        };
        let doc = emf("eu-west-1", &report, 1);
        assert_eq!(doc["ReplicationLagSeconds"], json!([1.5, 0.25]));
        assert_eq!(doc["RecordsVerified"], 2);
        assert_eq!(doc["_aws"]["CloudWatchMetrics"][0]["Namespace"], NAMESPACE);
        let many = BatchReport {
            lags_ms: (0..1000).collect(),
            ..BatchReport::default()
        };
        assert_eq!(
            emf("r", &many, 1)["ReplicationLagSeconds"]
                .as_array()
                .unwrap()
                .len(),
            100
        );
    }
}
