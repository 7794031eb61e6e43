//! Metric names in one place (CONTRACT §8), the Prometheus recorder, helpers that record
//! the common measurements, and `tracing` set-up (text or JSON).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;

pub const CHALLENGES_RECEIVED: &str = "sca_challenges_received_total";
pub const CHALLENGES_REJECTED: &str = "sca_challenges_rejected_total";
pub const OUTCOMES: &str = "sca_outcomes_total";
pub const PUSH_REQUESTS: &str = "sca_push_requests_total";
pub const PUSH_DURATION: &str = "sca_push_request_duration_seconds";
pub const SMS: &str = "sca_sms_total";
pub const OTP_VERIFICATIONS: &str = "sca_otp_verifications_total";
pub const RATE_LIMITED: &str = "sca_rate_limited_total";
pub const IN_FLIGHT: &str = "sca_challenges_in_flight";
pub const DECISION_LATENCY: &str = "sca_decision_latency_seconds";
pub const AMQP_CONNECTED: &str = "sca_amqp_connected";
pub const AMQP_RECONNECTS: &str = "sca_amqp_reconnects_total";
pub const AMQP_UNROUTABLE: &str = "sca_amqp_unroutable_total";
pub const PUBLISH_FAILURES: &str = "sca_amqp_publish_failures_total";
pub const HTTP_REQUESTS: &str = "sca_http_requests_total";
pub const RESPONSES_UNREACHABLE: &str = "sca_responses_unreachable_total";
pub const PROVIDER_TOKEN_RENEWALS: &str = "sca_provider_token_renewals_total";
pub const HTTP_CLOSED: &str = "sca_http_connections_closed_total";
pub const HTTP_REFUSED: &str = "sca_http_requests_refused_total";
pub const AMQP_REPLIES_DROPPED: &str = "sca_amqp_replies_dropped_total";
pub const AMQP_EVENTS_LOST: &str = "sca_amqp_events_lost_total";
pub const AMQP_CHANNELS_REPLACED: &str = "sca_amqp_channels_replaced_total";
pub const OFFLINE_VERIFICATIONS: &str = "sca_offline_verifications_total";
pub const FRAUD_REPORTS: &str = "sca_fraud_reports_total";
pub const RUNTIME_ALIVE_TASKS: &str = "sca_runtime_alive_tasks";
pub const CHALLENGES_HELD: &str = "sca_challenges_held";
pub const INTAKE_PAUSED: &str = "sca_intake_paused";
pub const CONTROL_REJECTED: &str = "sca_control_rejected_total";
pub const PARTITIONS_OWNED: &str = "sca_partitions_owned";
pub const CLUSTER_TAKEOVERS: &str = "sca_partition_takeovers_total";
pub const CLUSTER_HANDOVERS: &str = "sca_partition_handovers_total";
pub const CLUSTER_HANDED_OVER: &str = "sca_challenges_handed_over_total";
pub const CLUSTER_RESUMED: &str = "sca_challenges_resumed_total";
pub const CLUSTER_FENCES: &str = "sca_partition_fences_total";
pub const CLUSTER_FORWARDS: &str = "sca_forwards_total";
pub const CLUSTER_FORWARD_LATENCY: &str = "sca_forward_duration_seconds";
pub const CLUSTER_REROUTED: &str = "sca_challenges_rerouted_total";

pub mod handles;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Whether a recorder is installed ([`prometheus`] has run): metric handles taken
/// before are the no-op recorder's and are not cached.
fn recorder_installed() -> bool {
    HANDLE.get().is_some()
}

/// Installs the global Prometheus recorder once per process and returns its handle.
pub fn prometheus() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 120.0, 300.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets(&buckets)
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // The `metrics` macros record into the global recorder only. When another one
            // is already installed (an embedding application), everything recorded goes
            // there and this handle renders nothing but empty families: say so.
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed: /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        CHALLENGES_RECEIVED,
        "Challenges received from RabbitMQ, by kind."
    );
    describe_counter!(
        CHALLENGES_REJECTED,
        "Challenge messages dead-lettered, by reason code."
    );
    describe_counter!(
        OUTCOMES,
        "Outcomes published, by kind, outcome and channel."
    );
    describe_counter!(
        PUSH_REQUESTS,
        "Push requests sent, by provider, app and result."
    );
    describe_histogram!(
        PUSH_DURATION,
        Unit::Seconds,
        "Push attempt duration (waiting for a connection or concurrency slot included), by provider."
    );
    describe_counter!(SMS, "SMS sends, by result.");
    describe_counter!(OTP_VERIFICATIONS, "One-time code checks, by result.");
    describe_counter!(
        OFFLINE_VERIFICATIONS,
        "Offline code checks (POST /offline), by result."
    );
    describe_counter!(FRAUD_REPORTS, "Denials that reported fraud.");
    describe_counter!(RATE_LIMITED, "Refusals by a rate or abuse limit, by limit.");
    describe_gauge!(IN_FLIGHT, "Challenges held in memory and not yet decided.");
    describe_histogram!(
        DECISION_LATENCY,
        Unit::Seconds,
        "From dispatch to decision, by channel."
    );
    describe_gauge!(AMQP_CONNECTED, "1 while connected to RabbitMQ, else 0.");
    describe_gauge!(
        CHALLENGES_HELD,
        "Challenges held in memory, pending and retained after their outcome, read at each scrape (bounded by challenge.max_held)."
    );
    describe_gauge!(
        INTAKE_PAUSED,
        "1 while intake waits for room under challenge.max_held, else 0; read at each scrape."
    );
    describe_gauge!(
        RUNTIME_ALIVE_TASKS,
        "Tasks alive in the daemon's async runtime, read at each scrape (a leak shows as growth)."
    );
    describe_counter!(
        AMQP_RECONNECTS,
        "Connections to RabbitMQ opened after a loss."
    );
    describe_counter!(
        AMQP_UNROUTABLE,
        "Publishes returned as unroutable, by exchange."
    );
    describe_counter!(PUBLISH_FAILURES, "Publishes that failed and were retried.");
    describe_counter!(HTTP_REQUESTS, "HTTP API requests, by route and status.");
    describe_counter!(
        PROVIDER_TOKEN_RENEWALS,
        "Provider auth tokens minted, by provider."
    );
    describe_counter!(
        HTTP_CLOSED,
        "HTTP connections closed by a timeout, by listener and reason (header_timeout, idle)."
    );
    describe_counter!(
        HTTP_REFUSED,
        "HTTP requests refused, by listener and reason (overloaded, body_timeout)."
    );
    describe_counter!(
        AMQP_REPLIES_DROPPED,
        "reply_to publishes given up after bounded retries (the outcome itself still goes out)."
    );
    describe_counter!(
        AMQP_EVENTS_LOST,
        "Events given up: their publish failed on a channel closed by an error."
    );
    describe_counter!(
        AMQP_CHANNELS_REPLACED,
        "Publishing channels closed by a channel error and opened again."
    );
    describe_counter!(
        CONTROL_REJECTED,
        "Instance-to-instance messages dropped: unsigned, bad MAC or older than 30 s, by reason."
    );
    describe_gauge!(
        PARTITIONS_OWNED,
        "Cluster mode: partitions this instance owns."
    );
    describe_counter!(CLUSTER_TAKEOVERS, "Cluster mode: partitions claimed.");
    describe_counter!(
        CLUSTER_HANDOVERS,
        "Cluster mode: partitions handed over (rebalance or shutdown)."
    );
    describe_counter!(
        CLUSTER_HANDED_OVER,
        "Cluster mode: undecided challenges passed to the next owner with their progress."
    );
    describe_counter!(
        CLUSTER_RESUMED,
        "Cluster mode: challenges resumed from a previous owner's progress."
    );
    describe_counter!(
        CLUSTER_FENCES,
        "Cluster mode: partitions lost with their connection or consumer (their challenges dropped here)."
    );
    describe_counter!(
        CLUSTER_FORWARDS,
        "Cluster mode: operations sent to another instance, by route (owner, lookup) and result."
    );
    describe_histogram!(
        CLUSTER_FORWARD_LATENCY,
        Unit::Seconds,
        "Cluster mode: time to an answer for a forwarded operation, by route."
    );
    describe_counter!(
        CLUSTER_REROUTED,
        "Cluster mode: challenges moved from the plain queue to the consistent-hash exchange."
    );
}

/// Records one push request to a provider (`apns`/`fcm`/…) for an app with its result
/// label (one of [`crate::push::delivery::LABELS`]). The app label is the configured
/// name (unknown apps are refused before any push), shared, not copied.
pub fn record_push(
    provider: &'static str,
    app: &crate::challenge::model::AppName,
    result: &'static str,
    took: Duration,
) {
    handles::push(provider, app.shared(), result, took.as_secs_f64());
}

pub fn record_rate_limited(limit: &'static str) {
    handles::count(RATE_LIMITED, &["limit"], &[limit], 1);
}

/// lapin logs every message the broker returns (unroutable) at WARN with its whole body,
/// and a returned dead letter carries a refused challenge: device tokens, phone number.
/// The publisher counts returns itself (`sca_amqp_unroutable_total`), so that line is
/// turned off whatever the configured level.
fn quiet_returned_messages() -> tracing_subscriber::filter::Directive {
    "lapin::returned_messages=off"
        .parse()
        .expect("a static, valid directive")
}

/// Sets up `tracing` once; later calls are no-ops.
pub fn init_tracing(format: crate::config::LogFormat, level: &str) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_new(level)
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(quiet_returned_messages());
    let _ = if format == crate::config::LogFormat::Json {
        fmt()
            .with_env_filter(filter)
            .json()
            .with_current_span(false)
            .try_init()
    } else {
        fmt().with_env_filter(filter).try_init()
    };
}

/// What the engine reports at each scrape.
#[derive(Debug, Clone, Copy)]
pub struct Scraped {
    /// Challenges held, pending and retained.
    pub held: usize,
    /// A consumer waits for room under `challenge.max_held`.
    pub intake_paused: bool,
}

/// Renders the metrics for a scrape, with the runtime's live task count and the
/// engine's figures read now.
pub fn render(prom: &PrometheusHandle, now: Scraped) -> String {
    metrics::gauge!(CHALLENGES_HELD).set(now.held as f64);
    metrics::gauge!(INTAKE_PAUSED).set(if now.intake_paused { 1.0 } else { 0.0 });
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        metrics::gauge!(RUNTIME_ALIVE_TASKS).set(rt.metrics().num_alive_tasks() as f64);
    }
    prom.render()
}
