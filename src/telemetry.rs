//! Logging to stderr, and, for `sojourn dev` and `sojourn serve` when
//! `tracing.otlp_endpoint` is set, OpenTelemetry traces exported over
//! OTLP/HTTP (protobuf).
//!
//! Exported: the spans of Sojourn's own crates at `info` and above: an
//! `http.request` per API request, an `execution` per activation of an
//! execution actor, an `action` per action send (each with
//! `execution.id`). Logging keeps `SOJOURN_LOG` (default `warn`).

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::Failure;
use crate::settings::TracingSettings;

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_env("SOJOURN_LOG").unwrap_or_else(|_| EnvFilter::new("warn"))
}

fn log_layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter())
}

/// Plain logging to stderr (every command but `dev` and `serve`, and
/// those two until their settings are read).
pub(crate) fn logging() {
    tracing_subscriber::registry().with(log_layer()).init();
}

/// The trace exporter while the node runs; [`Telemetry::shutdown`] flushes
/// it.
#[derive(Debug)]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

/// Where spans go: `endpoint` is the collector's base URL
/// (`http://collector:4318`), `/v1/traces` is added unless already there.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_owned()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Logging, and trace export when the settings ask for it.
pub(crate) fn init(settings: &TracingSettings) -> Result<Telemetry, Failure> {
    let Some(endpoint) = settings
        .otlp_endpoint
        .as_ref()
        .map(|e| e.expose())
        .filter(|e| !e.is_empty())
    else {
        logging();
        return Ok(Telemetry { provider: None });
    };
    let url = traces_url(endpoint);
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| {
            Failure::Invalid(format!(
                "setting \"tracing.otlp_endpoint\" ({}): {e}",
                crate::settings::redact_url(&url)
            ))
        })?;
    let service = settings
        .service_name
        .clone()
        .unwrap_or_else(|| "sojourn".to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    // Sojourn's own spans only: the exporter's HTTP client must not trace
    // its own sends.
    let exported = Targets::new()
        .with_target("sojourn", LevelFilter::INFO)
        .with_default(LevelFilter::OFF);
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("sojourn"))
        .with_filter(exported);
    tracing_subscriber::registry()
        .with(log_layer())
        .with(otel)
        .init();
    eprintln!("tracing: spans exported to {url}");
    Ok(Telemetry {
        provider: Some(provider),
    })
}

impl Telemetry {
    /// Sends the spans still buffered, then stops the exporter.
    pub(crate) async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = done {
            eprintln!("tracing: flushing spans at shutdown failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
