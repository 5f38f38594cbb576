//! Reading a service's `/metrics` text (Prometheus exposition format) for the
//! figures the bench cannot take from outside: a histogram's quantiles, an
//! unlabelled sample, a counter summed by its `outcome` label or over the
//! series whose labels pass a test. What [`crate::normalizer`],
//! [`crate::delivery`] and [`crate::pipeline`] have in common.

use crate::report::thousands;

/// The value of an unlabelled sample (`name value`) in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        rest.starts_with(' ').then(|| rest.trim().parse().ok())?
    })
}

/// The cumulative buckets of histogram `name` as (upper bound, count), ascending, `+Inf`
/// last. Series with other labels (a destination, an operation) are added up bound by bound,
/// which is still a cumulative histogram: the one of all of them together.
pub fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for line in text.lines() {
        let Some((bound, count)) = bucket(line, &prefix) else {
            continue;
        };
        match buckets.iter_mut().find(|(b, _)| *b == bound) {
            Some((_, total)) => *total += count,
            None => buckets.push((bound, count)),
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// One `…_bucket{…,le="…"} count` line as (upper bound, count).
fn bucket(line: &str, prefix: &str) -> Option<(f64, f64)> {
    let rest = line.strip_prefix(prefix)?;
    let (labels, value) = rest.rsplit_once("} ")?;
    let le = labels
        .split(',')
        .find_map(|l| l.trim().strip_prefix("le="))?;
    let le = le.trim_matches('"');
    let bound = if le == "+Inf" {
        f64::INFINITY
    } else {
        le.parse().ok()?
    };
    Some((bound, value.trim().parse().ok()?))
}

/// The `q`-quantile of cumulative buckets, interpolated linearly within the bucket it
/// falls in, as Prometheus' `histogram_quantile`; the largest finite bound if it falls in
/// `+Inf`. `None` without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets {
        if count >= rank {
            if bound.is_infinite() {
                return Some(lower);
            }
            let share = if count > below {
                (rank - below) / (count - below)
            } else {
                0.0
            };
            return Some(lower + (bound - lower) * share);
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

/// The sum of every series of `name` whose labels (`(name, value)` pairs, quotes removed)
/// pass `keep`; 0 when there is none.
pub fn sum_where(text: &str, name: &str, keep: impl Fn(&[(&str, &str)]) -> bool) -> f64 {
    let prefix = format!("{name}{{");
    let mut total = 0.0;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let labels: Vec<(&str, &str)> = labels
            .split(',')
            .filter_map(|l| l.trim().split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if keep(&labels) {
            total += value.trim().parse::<f64>().unwrap_or(0.0);
        }
    }
    total
}

/// The value of label `name` among `labels`, as [`sum_where`] passes them.
pub fn label<'a>(labels: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

/// Counter `name` by its `outcome` label, summed over every other label, as
/// (outcome, total) in the order they first appear.
fn by_outcome(text: &str, name: &str) -> Vec<(String, f64)> {
    let prefix = format!("{name}{{");
    let mut by_outcome: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(&prefix) else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Some(outcome) = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix("outcome="))
        else {
            continue;
        };
        let outcome = outcome.trim_matches('"').to_owned();
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        match by_outcome.iter_mut().find(|(o, _)| *o == outcome) {
            Some((_, total)) => *total += value,
            None => by_outcome.push((outcome, value)),
        }
    }
    by_outcome
}

/// [`by_outcome`] as one line: "normalized 20,000, retry 3", or "none recorded".
pub fn outcomes(text: &str, name: &str) -> String {
    let by_outcome = by_outcome(text, name);
    if by_outcome.is_empty() {
        return "none recorded".to_owned();
    }
    by_outcome
        .iter()
        .map(|(outcome, n)| format!("{outcome} {}", thousands(n.round() as u64)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE handoff_bus_publish_seconds histogram
handoff_bus_publish_seconds_bucket{le=\"0.001\"} 10
handoff_bus_publish_seconds_bucket{le=\"0.005\"} 90
handoff_bus_publish_seconds_bucket{le=\"0.01\"} 100
handoff_bus_publish_seconds_bucket{le=\"+Inf\"} 100
handoff_bus_publish_seconds_sum 0.4
handoff_bus_publish_seconds_count 100
handoff_normalizer_normalize_seconds_sum 0.002
handoff_normalizer_normalize_seconds_count 100
handoff_normalizer_events_total{event_type=\"customer.converted\",outcome=\"normalized\"} 98
handoff_normalizer_events_total{event_type=\"lead.created\",outcome=\"normalized\"} 1
handoff_normalizer_events_total{event_type=\"customer.converted\",outcome=\"retry\"} 1
";

    #[test]
    fn quantiles_interpolate_within_the_bucket() {
        let buckets = histogram(TEXT, "handoff_bus_publish_seconds");
        assert_eq!(buckets.len(), 4);
        let p50 = quantile(&buckets, 0.5).expect("p50");
        // Rank 50 lies in (0.001, 0.005], 40 of its 80 observations in: halfway.
        assert!((p50 - 0.003).abs() < 1e-9, "{p50}");
        let p99 = quantile(&buckets, 0.99).expect("p99");
        assert!((p99 - 0.0095).abs() < 1e-9, "{p99}");
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn series_with_other_labels_are_added_up_per_bound() {
        let text = "\
r_seconds_bucket{destination=\"hubspot\",operation=\"upsert\",le=\"0.01\"} 3
r_seconds_bucket{destination=\"hubspot\",operation=\"upsert\",le=\"+Inf\"} 4
r_seconds_bucket{destination=\"hubspot\",operation=\"associate\",le=\"0.01\"} 1
r_seconds_bucket{destination=\"hubspot\",operation=\"associate\",le=\"+Inf\"} 1
";
        assert_eq!(
            histogram(text, "r_seconds"),
            vec![(0.01, 4.0), (f64::INFINITY, 5.0)]
        );
    }

    #[test]
    fn series_are_summed_by_their_labels() {
        let delivered = sum_where(TEXT, "handoff_normalizer_events_total", |labels| {
            label(labels, "outcome") == Some("normalized")
        });
        assert!((delivered - 99.0).abs() < 1e-9);
        let leads = sum_where(TEXT, "handoff_normalizer_events_total", |labels| {
            label(labels, "event_type") == Some("lead.created")
        });
        assert!((leads - 1.0).abs() < 1e-9);
        assert_eq!(sum_where(TEXT, "nothing_total", |_| true), 0.0);
    }

    #[test]
    fn samples_and_outcomes_are_read() {
        assert_eq!(
            sample(TEXT, "handoff_normalizer_normalize_seconds_count"),
            Some(100.0)
        );
        assert_eq!(sample(TEXT, "handoff_normalizer_normalize_seconds"), None);
        assert_eq!(
            outcomes(TEXT, "handoff_normalizer_events_total"),
            "normalized 99, retry 1"
        );
        assert_eq!(
            outcomes(TEXT, "handoff_writer_events_total"),
            "none recorded"
        );
    }
}
