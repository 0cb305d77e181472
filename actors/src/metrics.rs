//! Prometheus metrics through `prometheus-client`: labelled families, one
//! [`Registry`] per API, encoded in the Prometheus text format (0.0.4) by
//! the library ([`encode`]).
//!
//! Counters are the library's `Counter` (an atomic add). Histograms are
//! this module's [`Histogram`], lock-free (an atomic add per bucket and on
//! the sum) and encoded through the library's `EncodeMetric`: the library's
//! own histogram takes a mutex on every observation, and the transition
//! latency is observed on every step.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::registry::Registry;

/// Latency buckets in seconds, 0.5 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Writes every metric of `registry` in the Prometheus text format
/// (version 0.0.4, served as [`CONTENT_TYPE`]).
pub fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail; a metric's own encoder does not.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, registry);
    out
}

/// A histogram with fixed upper bounds: an atomic add per observation,
/// no lock. Clones share the same series (as the library's metrics do).
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    bounds: &'static [f64],
    /// One per bound, plus `+Inf` (not cumulative).
    counts: Box<[AtomicU64]>,
    /// Sum of observations, in microseconds (atomic integer add).
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            inner: Arc::new(HistogramInner {
                bounds,
                counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_micros: AtomicU64::new(0),
            }),
        }
    }

    /// Records one observation, in seconds (negative values count as 0).
    pub fn observe(&self, seconds: f64) {
        let s = seconds.max(0.0);
        let i = self.inner.bounds.partition_point(|b| *b < s);
        self.inner.counts[i].fetch_add(1, Ordering::Relaxed);
        self.inner
            .sum_micros
            .fetch_add((s * 1e6) as u64, Ordering::Relaxed);
    }

    /// How many observations so far.
    pub fn count(&self) -> u64 {
        self.inner
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }
}

/// [`LATENCY_BUCKETS`] (what a [`Family`] of histograms creates).
impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(LATENCY_BUCKETS)
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.inner;
        let bounds = inner.bounds.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(inner.counts.iter().map(|c| c.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = inner.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A gauge read when scraped, absent (no sample, no header) when it could
/// not be read on the last scrape.
#[derive(Debug, Clone)]
pub struct ScrapedGauge {
    value: Arc<AtomicI64>,
}

const UNKNOWN: i64 = i64::MIN;

impl Default for ScrapedGauge {
    fn default() -> Self {
        ScrapedGauge {
            value: Arc::new(AtomicI64::new(UNKNOWN)),
        }
    }
}

impl ScrapedGauge {
    /// The value read now, or `None` when it could not be read.
    pub fn set(&self, value: Option<i64>) {
        let v = value.map_or(UNKNOWN, |v| v.max(UNKNOWN + 1));
        self.value.store(v, Ordering::Relaxed);
    }
}

impl TypedMetric for ScrapedGauge {
    const TYPE: MetricType = MetricType::Gauge;
}

impl EncodeMetric for ScrapedGauge {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.value.load(Ordering::Relaxed))
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }

    fn is_empty(&self) -> bool {
        self.value.load(Ordering::Relaxed) == UNKNOWN
    }
}

/// A family listed (`# HELP`, `# TYPE`) even before its first series, as
/// the exposition always did; the library leaves empty families out.
#[derive(Debug, Clone, Default)]
pub struct Listed<M>(pub M);

impl<M: EncodeMetric> EncodeMetric for Listed<M> {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }
}

/// The label of the by-workflow counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WorkflowLabels {
    /// The workflow id. Bounded by the workflows that exist: an execution
    /// only starts for a stored workflow.
    pub workflow: Arc<str>,
}

/// Counters by workflow id. Incremented once per execution start or end
/// (not per step): a read lock and a map lookup, no allocation (the
/// workflow id is an `Arc<str>` the execution already holds).
#[derive(Debug, Clone, Default)]
pub struct ByWorkflow {
    family: Family<WorkflowLabels, Counter>,
}

impl ByWorkflow {
    pub fn inc(&self, workflow: &Arc<str>) {
        self.family
            .get_or_create(&WorkflowLabels {
                workflow: workflow.clone(),
            })
            .inc();
    }

    /// The count for one workflow id.
    pub fn get(&self, workflow: &str) -> u64 {
        self.family
            .get(&WorkflowLabels {
                workflow: workflow.into(),
            })
            .map_or(0, |c| c.get())
    }

    /// The family, to register (listed even while empty).
    pub fn family(&self) -> Listed<Family<WorkflowLabels, Counter>> {
        Listed(self.family.clone())
    }
}

/// The labels of the HTTP latency histogram. Bounded: known methods (else
/// `other`), the matched route template (else `unmatched`), the status.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

/// HTTP request latency by method, route and status.
pub type HttpHistogram = Family<HttpLabels, Histogram>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_encode_cumulative_buckets() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(0.5);
        h.observe(7.0);
        assert_eq!(h.count(), 4);
        let mut r = Registry::default();
        r.register("x_seconds", "test", h);
        let text = encode(&r);
        assert!(text.contains("# TYPE x_seconds histogram\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_count 4\n"), "{text}");
        assert!(text.contains("x_seconds_sum 8.05\n"), "{text}");
        assert_eq!(text.matches("le=\"+Inf\"").count(), 1, "{text}");
    }

    #[test]
    fn families_have_labels_and_escape_their_values() {
        let by = ByWorkflow::default();
        by.inc(&Arc::from("b"));
        by.inc(&Arc::from("b"));
        by.inc(&Arc::from("a\"x\\y\nz"));
        assert_eq!(by.get("b"), 2);
        let http = HttpHistogram::default();
        http.get_or_create(&HttpLabels {
            method: "GET",
            route: "/v1/x".into(),
            status: 200,
        })
        .observe(0.002);
        let mut r = Registry::default();
        // Counters are registered without `_total`; the encoder adds it.
        r.register("n", "Test", by.family());
        r.register("h", "Test", http);
        let text = encode(&r);
        assert!(text.contains("# HELP n_total Test.\n"), "{text}");
        assert!(text.contains("# TYPE n_total counter\n"), "{text}");
        assert!(text.contains("n_total{workflow=\"b\"} 2\n"), "{text}");
        // Quote, backslash and newline escaped: the sample stays one line.
        assert!(
            text.contains("n_total{workflow=\"a\\\"x\\\\y\\nz\"} 1\n"),
            "{text}"
        );
        assert!(
            text.lines()
                .all(|l| l.starts_with('#') || l.starts_with("n_total{") || l.starts_with("h_")),
            "{text}"
        );
        assert!(
            text.contains("h_count{method=\"GET\",route=\"/v1/x\",status=\"200\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "h_bucket{method=\"GET\",route=\"/v1/x\",status=\"200\",le=\"0.0025\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_gauge_that_could_not_be_read_is_left_out() {
        let g = ScrapedGauge::default();
        let mut r = Registry::default();
        r.register("g", "Test", g.clone());
        assert_eq!(encode(&r), "");
        r.register("e", "Test", ByWorkflow::default().family());
        assert_eq!(encode(&r), "# HELP e_total Test.\n# TYPE e_total counter\n");
        g.set(Some(3));
        assert!(encode(&r).contains("\ng 3\n"));
        g.set(None);
        assert!(!encode(&r).contains("# HELP g "));
    }
}
