//! The registry: families by name, and the text exposition.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, PoisonError, RwLock};

use crate::family::{CounterVec, Family, FloatCounterVec, GaugeVec, HistogramVec, Series};
use crate::metric::{normalize_buckets, Counter, FloatCounter, Gauge, Histogram};
use crate::text::{is_valid_label_name, is_valid_metric_name, push_f64, push_help, push_labels};

/// Suffixes a histogram adds to its name; no other family may take them.
const HISTOGRAM_SUFFIXES: [&str; 3] = ["_bucket", "_sum", "_count"];

#[derive(Clone)]
enum Entry {
    Counter(Arc<Family<Counter>>),
    FloatCounter(Arc<Family<FloatCounter>>),
    Gauge(Arc<Family<Gauge>>),
    Histogram(Arc<Family<Histogram>>),
}

/// A set of metric families. Cheap to clone: clones share the families.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<RwLock<BTreeMap<String, Entry>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.families.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("Registry")
            .field("families", &map.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter family `name` (include the `_total` suffix yourself).
    /// Asking again with the same labels returns the same family.
    pub fn counter(&self, name: &str, help: &str, labels: &[&str]) -> CounterVec {
        CounterVec(
            self.register(name, help, labels, (), Entry::Counter, |e| match e {
                Entry::Counter(f) => Some(f),
                _ => None,
            }),
        )
    }

    /// The counter family `name` whose totals need not be whole (seconds
    /// of CPU time); include the `_total` suffix yourself.
    pub fn float_counter(&self, name: &str, help: &str, labels: &[&str]) -> FloatCounterVec {
        FloatCounterVec(
            self.register(name, help, labels, (), Entry::FloatCounter, |e| match e {
                Entry::FloatCounter(f) => Some(f),
                _ => None,
            }),
        )
    }

    /// The gauge family `name`.
    pub fn gauge(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        GaugeVec(
            self.register(name, help, labels, (), Entry::Gauge, |e| match e {
                Entry::Gauge(f) => Some(f),
                _ => None,
            }),
        )
    }

    /// The histogram family `name` with these bucket upper bounds
    /// (strictly increasing; `+Inf` is implied).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let bounds = normalize_buckets(buckets);
        HistogramVec(
            self.register(name, help, labels, bounds, Entry::Histogram, |e| match e {
                Entry::Histogram(f) => Some(f),
                _ => None,
            }),
        )
    }

    /// Finds or adds a family. Any misuse returns a detached family (and
    /// fails a debug assertion) rather than corrupting the output.
    fn register<M: Series>(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        config: M::Config,
        wrap: fn(Arc<Family<M>>) -> Entry,
        unwrap: fn(&Entry) -> Option<&Arc<Family<M>>>,
    ) -> Arc<Family<M>> {
        if let Err(why) = check_names::<M>(name, labels) {
            debug_assert!(false, "metric {name:?}: {why}");
            return Arc::new(Family::new(name, help, labels, config));
        }
        let mut map = self
            .families
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get(name) {
            if let Some(existing) = unwrap(entry) {
                if existing
                    .label_names
                    .iter()
                    .map(String::as_str)
                    .eq(labels.iter().copied())
                    && existing.config == config
                {
                    return existing.clone();
                }
            }
            debug_assert!(
                false,
                "metric {name:?} registered again with another type, labels or buckets"
            );
            return Arc::new(Family::new(name, help, labels, config));
        }
        if let Some(other) = clashing_name::<M>(&map, name) {
            debug_assert!(
                false,
                "metric {name:?} clashes with the samples of {other:?}"
            );
            return Arc::new(Family::new(name, help, labels, config));
        }
        let family = Arc::new(Family::new(name, help, labels, config));
        map.insert(name.to_string(), wrap(family.clone()));
        family
    }

    /// Every family in the text exposition format 0.0.4: families sorted
    /// by name, series by label values; families with no series left out.
    pub fn render(&self) -> String {
        let entries: Vec<Entry> = {
            let map = self.families.read().unwrap_or_else(PoisonError::into_inner);
            map.values().cloned().collect()
        };
        let mut out = String::new();
        for entry in entries {
            match entry {
                Entry::Counter(f) => render_family(&mut out, &f, |out, labels, c| {
                    sample(out, &f.name, "", &f.label_names, labels, None);
                    let _ = writeln!(out, " {}", c.get());
                }),
                Entry::FloatCounter(f) => render_family(&mut out, &f, |out, labels, c| {
                    sample(out, &f.name, "", &f.label_names, labels, None);
                    out.push(' ');
                    push_f64(out, c.get());
                    out.push('\n');
                }),
                Entry::Gauge(f) => render_family(&mut out, &f, |out, labels, g| {
                    sample(out, &f.name, "", &f.label_names, labels, None);
                    out.push(' ');
                    push_f64(out, g.get());
                    out.push('\n');
                }),
                Entry::Histogram(f) => render_family(&mut out, &f, |out, labels, h| {
                    let snap = h.snapshot();
                    let les = snap.bounds.iter().copied().chain([f64::INFINITY]);
                    for (le, n) in les.zip(&snap.cumulative) {
                        sample(out, &f.name, "_bucket", &f.label_names, labels, Some(le));
                        let _ = writeln!(out, " {n}");
                    }
                    sample(out, &f.name, "_sum", &f.label_names, labels, None);
                    out.push(' ');
                    push_f64(out, snap.sum);
                    out.push('\n');
                    sample(out, &f.name, "_count", &f.label_names, labels, None);
                    let _ = writeln!(out, " {}", snap.count);
                }),
            }
        }
        out
    }
}

fn check_names<M: Series>(name: &str, labels: &[&str]) -> Result<(), String> {
    if !is_valid_metric_name(name) {
        return Err("invalid metric name".into());
    }
    for (i, l) in labels.iter().enumerate() {
        if !is_valid_label_name(l) {
            return Err(format!("invalid label name {l:?}"));
        }
        if labels[..i].contains(l) {
            return Err(format!("label {l:?} given twice"));
        }
        if M::TYPE == "histogram" && *l == "le" {
            return Err("a histogram cannot have an `le` label".into());
        }
    }
    Ok(())
}

/// A registered family whose sample names would collide with the new
/// one's, through a histogram's `_bucket`/`_sum`/`_count` suffixes.
fn clashing_name<M: Series>(map: &BTreeMap<String, Entry>, name: &str) -> Option<String> {
    for suffix in HISTOGRAM_SUFFIXES {
        if let Some(base) = name.strip_suffix(suffix) {
            if let Some(Entry::Histogram(_)) = map.get(base) {
                return Some(base.to_string());
            }
        }
        if M::TYPE == "histogram" {
            let derived = format!("{name}{suffix}");
            if map.contains_key(&derived) {
                return Some(derived);
            }
        }
    }
    None
}

fn render_family<M: Series>(
    out: &mut String,
    family: &Family<M>,
    mut write_series: impl FnMut(&mut String, &[String], &M),
) {
    let series = family.snapshot();
    if series.is_empty() {
        return;
    }
    out.push_str("# HELP ");
    out.push_str(&family.name);
    out.push(' ');
    push_help(out, &family.help);
    out.push_str("\n# TYPE ");
    out.push_str(&family.name);
    out.push(' ');
    out.push_str(M::TYPE);
    out.push('\n');
    for (labels, m) in &series {
        write_series(out, labels, m);
    }
}

fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    names: &[String],
    values: &[String],
    le: Option<f64>,
) {
    out.push_str(name);
    out.push_str(suffix);
    push_labels(out, names, values, le);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_all_kinds_sorted() {
        let r = Registry::new();
        let c = r.counter("b_requests_total", "Requests.", &["tenant", "outcome"]);
        c.with(&["t2", "ok"]).inc_by(3);
        c.with(&["t1", "ok"]).inc();
        c.with(&["t1", "error"]).inc();
        let g = r.gauge("a_active", "Active\\now\nsecond line", &[]);
        g.with(&[]).set(2.5);
        let h = r.histogram("c_latency_seconds", "Latency.", &["shard"], &[0.1, 1.0]);
        h.with(&["s\"1\n\\"]).observe(0.05);
        h.with(&["s\"1\n\\"]).observe(0.5);
        h.with(&["s\"1\n\\"]).observe(3.0);
        let want = "\
# HELP a_active Active\\\\now\\nsecond line
# TYPE a_active gauge
a_active 2.5
# HELP b_requests_total Requests.
# TYPE b_requests_total counter
b_requests_total{tenant=\"t1\",outcome=\"error\"} 1
b_requests_total{tenant=\"t1\",outcome=\"ok\"} 1
b_requests_total{tenant=\"t2\",outcome=\"ok\"} 3
# HELP c_latency_seconds Latency.
# TYPE c_latency_seconds histogram
c_latency_seconds_bucket{shard=\"s\\\"1\\n\\\\\",le=\"0.1\"} 1
c_latency_seconds_bucket{shard=\"s\\\"1\\n\\\\\",le=\"1\"} 2
c_latency_seconds_bucket{shard=\"s\\\"1\\n\\\\\",le=\"+Inf\"} 3
c_latency_seconds_sum{shard=\"s\\\"1\\n\\\\\"} 3.55
c_latency_seconds_count{shard=\"s\\\"1\\n\\\\\"} 3
";
        assert_eq!(r.render(), want);
    }

    #[test]
    fn unlabelled_families_render_zero_and_empty_labelled_ones_nothing() {
        let r = Registry::new();
        r.counter("x_total", "X.", &[]);
        r.histogram("y_seconds", "Y.", &[], &[1.0]);
        r.gauge("z", "Z.", &["shard"]);
        let out = r.render();
        assert!(out.contains("\nx_total 0\n"), "{out}");
        assert!(out.contains("y_seconds_bucket{le=\"1\"} 0\n"), "{out}");
        assert!(out.contains("y_seconds_bucket{le=\"+Inf\"} 0\n"), "{out}");
        assert!(out.contains("y_seconds_count 0\n"), "{out}");
        assert!(!out.contains("# TYPE z"), "{out}");
    }

    #[test]
    fn float_counters_render_as_counters() {
        let r = Registry::new();
        let c = r.float_counter("cpu_seconds_total", "CPU time.", &[]);
        c.with(&[]).advance_to(1.25);
        assert_eq!(
            r.render(),
            "# HELP cpu_seconds_total CPU time.\n# TYPE cpu_seconds_total counter\ncpu_seconds_total 1.25\n"
        );
    }

    #[test]
    fn same_name_same_family() {
        let r = Registry::new();
        r.counter("c_total", "C.", &["a"]).with(&["1"]).inc();
        let again = r.counter("c_total", "C.", &["a"]);
        assert_eq!(again.with(&["1"]).get(), 1);
        let h1 = r.histogram("h_seconds", "H.", &[], &[1.0, 2.0]);
        h1.with(&[]).observe(1.0);
        let h2 = r.histogram("h_seconds", "H.", &[], &[1.0, 2.0]);
        assert_eq!(h2.with(&[]).snapshot().count, 1);
    }

    #[test]
    fn clones_share_families() {
        let r = Registry::new();
        let r2 = r.clone();
        r.gauge("g", "G.", &[]).with(&[]).set(7.0);
        assert!(r2.render().contains("\ng 7\n"));
    }

    #[test]
    fn removed_series_are_not_rendered() {
        let r = Registry::new();
        let g = r.gauge("shard_up", "Up.", &["shard"]);
        g.with(&["a"]).set(1.0);
        g.with(&["b"]).set(0.0);
        g.remove(&["a"]);
        let out = r.render();
        assert!(!out.contains("shard=\"a\""), "{out}");
        assert!(out.contains("shard_up{shard=\"b\"} 0\n"), "{out}");
    }

    #[cfg(debug_assertions)]
    mod misuse {
        use super::*;

        #[test]
        #[should_panic(expected = "another type")]
        fn type_mismatch() {
            let r = Registry::new();
            r.counter("m", "M.", &[]);
            r.gauge("m", "M.", &[]);
        }

        #[test]
        #[should_panic(expected = "another type")]
        fn label_mismatch() {
            let r = Registry::new();
            r.counter("m_total", "M.", &["a"]);
            r.counter("m_total", "M.", &["b"]);
        }

        #[test]
        #[should_panic(expected = "invalid metric name")]
        fn bad_name() {
            Registry::new().counter("bad-name", "B.", &[]);
        }

        #[test]
        #[should_panic(expected = "invalid label name")]
        fn bad_label() {
            Registry::new().counter("ok_total", "B.", &["bad-label"]);
        }

        #[test]
        #[should_panic(expected = "`le` label")]
        fn histogram_le_label() {
            Registry::new().histogram("h_seconds", "H.", &["le"], &[1.0]);
        }

        #[test]
        #[should_panic(expected = "clashes")]
        fn histogram_suffix_clash() {
            let r = Registry::new();
            r.histogram("h_seconds", "H.", &[], &[1.0]);
            r.counter("h_seconds_count", "C.", &[]);
        }
    }

    #[cfg(not(debug_assertions))]
    #[test]
    fn misuse_is_detached_in_release() {
        let r = Registry::new();
        r.counter("m", "M.", &[]).with(&[]).inc();
        let g = r.gauge("m", "M.", &[]);
        g.with(&[]).set(5.0);
        let bad = r.counter("bad-name", "B.", &[]);
        bad.with(&[]).inc();
        let out = r.render();
        assert!(out.contains("# TYPE m counter\nm 1\n"), "{out}");
        assert!(!out.contains("bad-name"), "{out}");
    }
}
