//! Tracing set-up: structured logs to stderr (stdout is kept for the `ferry: … listening on` lines
//! that scripts read), filter from the settings or `FERRY_LOG`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

/// Installs the global subscriber. Safe to call more than once (later calls do nothing).
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_new(&settings.filter).unwrap_or_else(|e| {
        eprintln!(
            "ferry: invalid log filter {:?} ({e}); using \"info\"",
            settings.filter
        );
        EnvFilter::new("info")
    });
    // Colours only on a terminal: log files and collectors get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// Metrics are global by nature (the `metrics` facade has one recorder per process); tests start
/// several applications in one process, so installation happens once and every app renders the
/// same registry at `GET /metrics`.
pub fn metrics_handle() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = commit_buckets(metrics_exporter_prometheus::PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first (an embedding program's); then
            // our metrics go to theirs and this handle renders an empty page.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// The group committer's two histograms get buckets, so that Prometheus shows their distributions
/// exactly (`_bucket{le=…}`) and can add them up across instances. Without buckets the exporter
/// renders a summary, whose quantiles disagreed with the batch sizes actually committed when this
/// was measured (BENCHMARKS.md, "PostgreSQL: what one shared commit costs").
fn commit_buckets(
    builder: metrics_exporter_prometheus::PrometheusBuilder,
) -> metrics_exporter_prometheus::PrometheusBuilder {
    use metrics_exporter_prometheus::Matcher;
    const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
    const SECONDS: &[f64] = &[
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    ];
    // Fails only for an empty list of buckets, which these are not; then the defaults (summaries).
    builder
        .set_buckets_for_metric(Matcher::Full("ferry_commit_batch_size".into()), SIZES)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("ferry_commit_seconds".into()), SECONDS)
        })
        .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new())
}
