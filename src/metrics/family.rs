//! Metric families and the Prometheus text exposition format 0.0.4.
//!
//! Hand-written rather than `prometheus-client`: that crate emits only the OpenMetrics text
//! format (its own `_total`/`_info` naming and `# EOF`), while gitlab-runner's dashboards and the
//! brief want the classic 0.0.4 format with gitlab-runner's exact names. Our metric set is small
//! and fixed, so a few dozen lines of rendering are cheaper than adapting a registry.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Label values of one series, in the family's label-name order.
type Key = Vec<String>;

/// Locks a map, recovering from poisoning: a panic elsewhere must not stop metrics.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A counter or gauge family (the value is an `f64`; counters only ever grow).
#[derive(Debug)]
pub(crate) struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Key, f64>>,
}

impl Family {
    pub(crate) fn counter(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self::new(name, help, "counter", labels)
    }

    pub(crate) fn gauge(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Self::new(name, help, "gauge", labels)
    }

    fn new(
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &'static [&'static str],
    ) -> Self {
        Family {
            name,
            help,
            kind,
            labels,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn add(&self, labels: &[&str], v: f64) {
        *lock(&self.values).entry(key(labels)).or_insert(0.0) += v;
    }

    pub(crate) fn set(&self, labels: &[&str], v: f64) {
        lock(&self.values).insert(key(labels), v);
    }

    /// Current value of one series (unit tests).
    #[cfg(test)]
    pub(crate) fn get(&self, labels: &[&str]) -> f64 {
        lock(&self.values).get(&key(labels)).copied().unwrap_or(0.0)
    }

    pub(crate) fn render(&self, out: &mut String) {
        header(out, self.name, self.help, self.kind);
        for (k, v) in lock(&self.values).iter() {
            series(out, self.name, self.labels, k, None, *v);
        }
    }
}

/// A histogram family with fixed buckets.
#[derive(Debug)]
pub(crate) struct Histogram {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    buckets: &'static [f64],
    values: Mutex<BTreeMap<Key, HistogramData>>,
}

#[derive(Debug, Clone, Default)]
struct HistogramData {
    /// Non-cumulative counts per bucket; rendering accumulates.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub(crate) fn new(
        name: &'static str,
        help: &'static str,
        labels: &'static [&'static str],
        buckets: &'static [f64],
    ) -> Self {
        Histogram {
            name,
            help,
            labels,
            buckets,
            values: Mutex::new(BTreeMap::new()),
        }
    }

    pub(crate) fn observe(&self, labels: &[&str], v: f64) {
        let mut map = lock(&self.values);
        let data = map.entry(key(labels)).or_insert_with(|| HistogramData {
            counts: vec![0; self.buckets.len()],
            ..Default::default()
        });
        if let Some(i) = self.buckets.iter().position(|b| v <= *b) {
            data.counts[i] += 1;
        }
        data.sum += v;
        data.count += 1;
    }

    pub(crate) fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let bucket_name = format!("{}_bucket", self.name);
        let sum_name = format!("{}_sum", self.name);
        let count_name = format!("{}_count", self.name);
        for (k, data) in lock(&self.values).iter() {
            let mut cumulative = 0;
            for (b, c) in self.buckets.iter().zip(&data.counts) {
                cumulative += c;
                let le = format_value(*b);
                series(
                    out,
                    &bucket_name,
                    self.labels,
                    k,
                    Some(&le),
                    cumulative as f64,
                );
            }
            series(
                out,
                &bucket_name,
                self.labels,
                k,
                Some("+Inf"),
                data.count as f64,
            );
            series(out, &sum_name, self.labels, k, None, data.sum);
            series(out, &count_name, self.labels, k, None, data.count as f64);
        }
    }
}

fn key(labels: &[&str]) -> Key {
    labels.iter().map(|s| s.to_string()).collect()
}

pub(crate) fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    // Writing into a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub(crate) fn series(
    out: &mut String,
    name: &str,
    label_names: &[&str],
    values: &[String],
    le: Option<&str>,
    v: f64,
) {
    out.push_str(name);
    let mut pairs: Vec<(&str, String)> = label_names
        .iter()
        .zip(values)
        .map(|(n, v)| (*n, escape_label(v)))
        .collect();
    if let Some(le) = le {
        pairs.push(("le", le.to_string()));
    }
    if !pairs.is_empty() {
        out.push('{');
        let body: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}=\"{v}\"")).collect();
        out.push_str(&body.join(","));
        out.push('}');
    }
    out.push(' ');
    out.push_str(&format_value(v));
    out.push('\n');
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus float formatting: integers without a fraction, `+Inf`/`-Inf`/`NaN` spelled out.
pub(crate) fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_renders_with_escaped_labels() {
        let f = Family::counter("x_total", "Help \\ me\nplease.", &["a", "b"]);
        f.add(&["1", "q\"uo\\te"], 1.0);
        f.add(&["1", "q\"uo\\te"], 2.0);
        let mut out = String::new();
        f.render(&mut out);
        assert_eq!(
            out,
            "# HELP x_total Help \\\\ me\\nplease.\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"uo\\\\te\"} 3\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new("h_seconds", "H.", &[], &[0.5, 1.0, 5.0]);
        for v in [0.1, 0.7, 0.9, 3.0, 100.0] {
            h.observe(&[], v);
        }
        let mut out = String::new();
        h.render(&mut out);
        let body: Vec<&str> = out.lines().skip(2).collect();
        assert_eq!(
            body,
            [
                "h_seconds_bucket{le=\"0.5\"} 1",
                "h_seconds_bucket{le=\"1\"} 3",
                "h_seconds_bucket{le=\"5\"} 4",
                "h_seconds_bucket{le=\"+Inf\"} 5",
                "h_seconds_sum 104.7",
                "h_seconds_count 5",
            ]
        );
    }

    #[test]
    fn values_format_like_prometheus() {
        assert_eq!(format_value(3.0), "3");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
    }
}
