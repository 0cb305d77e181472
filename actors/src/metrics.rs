//! Prometheus metrics: lock-free counters and fixed-bucket histograms, and
//! the text exposition format (version 0.0.4) they are served in.
//!
//! Hand-rolled rather than a metrics crate: a handful of series, updated on
//! per-step paths where an atomic add is all we want to pay.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Latency buckets in seconds, 0.5 ms to 60 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// A histogram with fixed upper bounds (cumulative only when encoded).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One per bound, plus `+Inf`.
    counts: Box<[AtomicU64]>,
    /// Sum of observations, in microseconds (atomic integer add).
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation, in seconds (negative values count as 0).
    pub fn observe(&self, seconds: f64) {
        let s = seconds.max(0.0);
        let i = self.bounds.partition_point(|b| *b < s);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((s * 1e6) as u64, Ordering::Relaxed);
    }

    /// How many observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    fn encode(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Counters keyed by one label value (e.g. the workflow).
#[derive(Debug, Default)]
pub struct LabeledCounter {
    series: RwLock<HashMap<String, AtomicU64>>,
}

impl LabeledCounter {
    pub fn inc(&self, label: &str) {
        if let Ok(m) = self.series.read()
            && let Some(c) = m.get(label)
        {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if let Ok(mut m) = self.series.write() {
            m.entry(label.to_owned())
                .or_default()
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The count for one label value.
    pub fn get(&self, label: &str) -> u64 {
        self.series
            .read()
            .ok()
            .and_then(|m| m.get(label).map(|c| c.load(Ordering::Relaxed)))
            .unwrap_or(0)
    }

    fn encode(&self, out: &mut String, name: &str, label: &str) {
        let Ok(m) = self.series.read() else { return };
        let mut rows: Vec<(&String, u64)> = m
            .iter()
            .map(|(k, v)| (k, v.load(Ordering::Relaxed)))
            .collect();
        rows.sort();
        for (value, n) in rows {
            let _ = writeln!(out, "{name}{{{label}=\"{}\"}} {n}", escape(value));
        }
    }
}

/// Histograms keyed by a set of label values (e.g. HTTP method, route and
/// status), found by a hash of the values (no allocation once a series
/// exists).
#[derive(Debug)]
pub struct LabeledHistogram {
    bounds: &'static [f64],
    series: RwLock<HashMap<u64, (Vec<String>, Histogram)>>,
}

fn hash_labels(labels: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    h.finish()
}

impl LabeledHistogram {
    pub fn new(bounds: &'static [f64]) -> LabeledHistogram {
        LabeledHistogram {
            bounds,
            series: RwLock::default(),
        }
    }

    pub fn observe(&self, labels: &[&str], seconds: f64) {
        let key = hash_labels(labels);
        if let Ok(m) = self.series.read()
            && let Some((_, h)) = m.get(&key)
        {
            h.observe(seconds);
            return;
        }
        if let Ok(mut m) = self.series.write() {
            m.entry(key)
                .or_insert_with(|| {
                    (
                        labels.iter().map(|s| (*s).to_owned()).collect(),
                        Histogram::new(self.bounds),
                    )
                })
                .1
                .observe(seconds);
        }
    }

    fn encode(&self, out: &mut String, name: &str, label_names: &[&str]) {
        let Ok(m) = self.series.read() else { return };
        let mut rows: Vec<&(Vec<String>, Histogram)> = m.values().collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        for (values, h) in rows {
            let labels = label_names
                .iter()
                .zip(values)
                .map(|(n, v)| format!("{n}=\"{}\"", escape(v)))
                .collect::<Vec<_>>()
                .join(",");
            h.encode(out, name, &labels);
        }
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes Prometheus text: `# HELP`/`# TYPE` headers and samples.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, "counter", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, "gauge", help);
        let _ = writeln!(self.out, "{name} {value}");
    }

    pub fn labeled_counter(&mut self, name: &str, help: &str, label: &str, c: &LabeledCounter) {
        self.header(name, "counter", help);
        c.encode(&mut self.out, name, label);
    }

    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.header(name, "histogram", help);
        h.encode(&mut self.out, name, "");
    }

    pub fn labeled_histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        h: &LabeledHistogram,
    ) {
        self.header(name, "histogram", help);
        h.encode(&mut self.out, name, labels);
    }

    pub fn finish(self) -> String {
        self.out
    }
}

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
        let mut e = Exposition::default();
        e.histogram("x_seconds", "test", &h);
        let text = e.finish();
        assert!(text.contains("x_seconds_bucket{le=\"0.1\"} 1\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"1\"} 3\n"), "{text}");
        assert!(text.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"), "{text}");
        assert!(text.contains("x_seconds_count 4\n"), "{text}");
        assert!(text.contains("x_seconds_sum 8.05\n"), "{text}");
    }

    #[test]
    fn labeled_series_are_escaped_and_sorted() {
        let c = LabeledCounter::default();
        c.inc("b");
        c.inc("a\"x");
        c.inc("b");
        let mut e = Exposition::default();
        e.labeled_counter("n_total", "test", "workflow", &c);
        let text = e.finish();
        let a = text.find("workflow=\"a\\\"x\"} 1").expect("a");
        let b = text.find("workflow=\"b\"} 2").expect("b");
        assert!(a < b);
        let h = LabeledHistogram::new(LATENCY_BUCKETS);
        h.observe(&["GET", "/v1/x", "200"], 0.002);
        let mut e = Exposition::default();
        e.labeled_histogram("h", "t", &["method", "route", "status"], &h);
        assert!(
            e.finish()
                .contains("h_count{method=\"GET\",route=\"/v1/x\",status=\"200\"} 1")
        );
    }
}
