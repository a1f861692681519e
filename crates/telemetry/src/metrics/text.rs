//! A reader of the Prometheus text format (0.0.4), for tests and tools that need the values a
//! `/metrics` page shows: it checks the syntax of every line (names, quoted label values with their
//! escapes, numbers including `+Inf` and `NaN`, `# TYPE` kinds) and returns the samples.
use std::collections::BTreeMap;

/// One sample line: a series and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (for a histogram: `…_bucket`, `…_sum`, `…_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A line that is not Prometheus text.
#[derive(Debug, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: &'static str,
    /// The line.
    pub text: String,
}

/// Every sample of a scrape.
#[derive(Debug, Clone, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    /// The sum of the samples named `name` whose labels include every pair of `labels` (0 when
    /// none match: a series not yet created has counted nothing).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Whether any sample is named `name`.
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|s| s.name == name)
    }
}

/// Parses a scrape.
pub fn parse(text: &str) -> Result<Samples, ParseError> {
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let err = |reason| ParseError {
            line: i + 1,
            reason,
            text: line.to_string(),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            check_comment(comment.trim_start()).map_err(err)?;
            continue;
        }
        samples.push(sample(line).map_err(err)?);
    }
    Ok(Samples(samples))
}

fn check_comment(c: &str) -> Result<(), &'static str> {
    let mut words = c.splitn(3, ' ');
    match words.next() {
        Some("HELP") => {
            metric_name(words.next().unwrap_or(""))?;
        }
        Some("TYPE") => {
            metric_name(words.next().unwrap_or(""))?;
            let kind = words.next().unwrap_or("").trim();
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err("unknown metric type");
            }
        }
        _ => {}
    }
    Ok(())
}

fn metric_name(n: &str) -> Result<&str, &'static str> {
    let ok = n.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if n.is_empty() || !ok {
        return Err("bad metric name");
    }
    Ok(n)
}

fn label_name(n: &str) -> Result<&str, &'static str> {
    let ok = n
        .chars()
        .enumerate()
        .all(|(i, c)| c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit()));
    if n.is_empty() || !ok {
        return Err("bad label name");
    }
    Ok(n)
}

fn sample(line: &str) -> Result<Sample, &'static str> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = metric_name(&line[..end])?.to_string();
    let mut rest = &line[end..];
    let mut labels = BTreeMap::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = parse_labels(after, &mut labels)?;
    }
    let mut fields = rest.split_whitespace();
    let value = number(fields.next().ok_or("no value")?)?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing text");
    }
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// Parses `k="v",…}` and returns what follows the brace.
fn parse_labels<'a>(
    mut s: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, &'static str> {
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("label without value")?;
        let key = label_name(s[..eq].trim())?.to_string();
        let quoted = s[eq + 1..].trim_start();
        if !quoted.starts_with('"') {
            return Err("unquoted label value");
        }
        let mut value = String::new();
        let mut closed = None;
        let mut escaped = false;
        for (i, c) in quoted.char_indices().skip(1) {
            if escaped {
                value.push(match c {
                    'n' => '\n',
                    '\\' | '"' => c,
                    _ => return Err("bad escape in label value"),
                });
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                closed = Some(i);
                break;
            } else {
                value.push(c);
            }
        }
        let close = closed.ok_or("unterminated label value")?;
        if labels.insert(key, value).is_some() {
            return Err("repeated label");
        }
        s = quoted[close + 1..].trim_start();
        s = s.strip_prefix(',').unwrap_or(s);
    }
}

fn number(v: &str) -> Result<f64, &'static str> {
    match v {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| "bad value"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_families_labels_and_values() {
        let text = r#"# HELP datapath_copy_bytes_total Bytes.
# TYPE datapath_copy_bytes_total counter
datapath_copy_bytes_total 33554432
# TYPE datapath_jobs gauge
datapath_jobs{status="RUNNING"} 0
datapath_jobs{status="SUCCEEDED"} 3
datapath_x_bucket{a="q\"uo\\te\n",le="+Inf"} 2 1700000000000
datapath_x_sum{a="b", } 1.5e-3
"#;
        let s = parse(text).unwrap();
        assert_eq!(s.sum("datapath_copy_bytes_total", &[]), 33554432.0);
        assert_eq!(s.sum("datapath_jobs", &[("status", "SUCCEEDED")]), 3.0);
        assert_eq!(s.sum("datapath_jobs", &[]), 3.0);
        assert_eq!(s.sum("datapath_jobs", &[("status", "FAILED")]), 0.0);
        assert_eq!(s.0[3].labels["a"], "q\"uo\\te\n");
        assert_eq!(s.0[3].labels["le"], "+Inf");
        assert_eq!(s.sum("datapath_x_sum", &[]), 0.0015);
        assert!(s.has("datapath_x_bucket") && !s.has("datapath_y"));
    }

    #[test]
    fn rejects_what_prometheus_would() {
        for bad in [
            "9lives 1",
            "x{a=b} 1",
            "x{a=\"b} 1",
            "x{a=\"b\",a=\"c\"} 1",
            "x{a=\"\\q\"} 1",
            "x one",
            "x",
            "x 1 2 3",
            "# TYPE x countr",
            "x{-a=\"b\"} 1",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
