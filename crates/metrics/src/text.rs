//! The text format's small pieces: name rules, escaping, numbers.

use std::fmt::Write;

/// Whether `name` is a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':' => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Whether `name` is a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, and
/// not starting with `__`, which Prometheus reserves).
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() || c == '_' => {}
        _ => return false,
    }
    !name.starts_with("__") && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Appends a `# HELP` text: backslash and newline escaped.
pub fn push_help(out: &mut String, help: &str) {
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends a label value: backslash, double quote and newline escaped.
pub fn push_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends a sample value as Prometheus parses it (`+Inf`, `-Inf`,
/// `NaN`; Rust's shortest round-trip decimal otherwise).
pub fn push_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        // Writing to a String cannot fail.
        let _ = write!(out, "{v}");
    }
}

/// Appends `{name="value",...}` with an optional trailing `le` label;
/// nothing when there are no labels at all.
pub fn push_labels(out: &mut String, names: &[String], values: &[String], le: Option<f64>) {
    if names.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (name, value) in names.iter().zip(values) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        push_label_value(out, value);
        out.push('"');
    }
    if let Some(le) = le {
        if !first {
            out.push(',');
        }
        out.push_str("le=\"");
        push_f64(out, le);
        out.push('"');
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names() {
        for ok in ["a", "_a", ":a", "router_requests_total", "a:b_c9", "A"] {
            assert!(is_valid_metric_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a-b", "a b", "é", "a.b", "a{"] {
            assert!(!is_valid_metric_name(bad), "{bad}");
        }
    }

    #[test]
    fn label_names() {
        for ok in ["a", "_a", "tenant", "shard_id2"] {
            assert!(is_valid_label_name(ok), "{ok}");
        }
        for bad in ["", "9a", "a:b", "__name__", "__x", "a-b"] {
            assert!(!is_valid_label_name(bad), "{bad}");
        }
    }

    #[test]
    fn escaping() {
        let mut s = String::new();
        push_label_value(&mut s, "a\\b\"c\nd\te");
        assert_eq!(s, "a\\\\b\\\"c\\nd\te");
        let mut h = String::new();
        push_help(&mut h, "a\\b\"c\nd");
        assert_eq!(h, "a\\\\b\"c\\nd");
    }

    #[test]
    fn floats() {
        let cases = [
            (0.0, "0"),
            (1.0, "1"),
            (0.0001, "0.0001"),
            (2.5, "2.5"),
            (-3.25, "-3.25"),
            (f64::INFINITY, "+Inf"),
            (f64::NEG_INFINITY, "-Inf"),
            (f64::NAN, "NaN"),
        ];
        for (v, want) in cases {
            let mut s = String::new();
            push_f64(&mut s, v);
            assert_eq!(s, want);
        }
    }

    #[test]
    fn labels() {
        let names = vec!["a".to_string(), "b".to_string()];
        let values = vec!["x\"".to_string(), "y".to_string()];
        let mut s = String::new();
        push_labels(&mut s, &names, &values, None);
        assert_eq!(s, "{a=\"x\\\"\",b=\"y\"}");
        let mut s = String::new();
        push_labels(&mut s, &names, &values, Some(0.5));
        assert_eq!(s, "{a=\"x\\\"\",b=\"y\",le=\"0.5\"}");
        let mut s = String::new();
        push_labels(&mut s, &[], &[], Some(f64::INFINITY));
        assert_eq!(s, "{le=\"+Inf\"}");
        let mut s = String::new();
        push_labels(&mut s, &[], &[], None);
        assert_eq!(s, "");
    }
}
