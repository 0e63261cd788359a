//! A small Prometheus registry: counters, gauges and histograms with
//! labels, rendered in the text exposition format 0.0.4 for `/metrics`.
//! Std only. Updating a series is lock-free (atomics); finding a series
//! takes a read lock and allocates nothing once the series exists.
//! Output is stable: families sorted by name, series by label values.
//!
//! Misuse (an invalid name, a family registered twice with another type or
//! other labels, the wrong number of label values) is a programming error:
//! it fails a `debug_assert!` and, in release builds, is answered with a
//! detached family or series that works but is never rendered, so a
//! mistake in metrics never takes a server down.
//!
//! # Layout
//! - [`registry`]: [`Registry`], family registration and rendering.
//! - [`family`]: the labelled families ([`CounterVec`], [`FloatCounterVec`],
//!   [`GaugeVec`], [`HistogramVec`]) and their series lookup.
//! - [`metric`]: the series themselves ([`Counter`], [`FloatCounter`],
//!   [`Gauge`], [`Histogram`]).
//! - [`text`]: name validation, escaping and number formatting.

pub mod family;
pub mod metric;
pub mod registry;
pub mod text;

pub use family::{CounterVec, FloatCounterVec, GaugeVec, HistogramVec};
pub use metric::{Counter, FloatCounter, Gauge, Histogram};
pub use registry::Registry;

/// The `Content-Type` of [`Registry::render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Histogram buckets for request latencies in seconds: fine from 100µs to
/// 10ms, where a routed query on a warm pool lands, then coarser up to 10s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
    0.5, 1.0, 2.5, 5.0, 10.0,
];
