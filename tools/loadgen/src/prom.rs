//! Reading a Prometheus histogram from `/metrics` text, and its quantiles between two
//! scrapes (linear within a bucket, as Prometheus's `histogram_quantile` does).

/// Cumulative bucket counts of one histogram: `(upper bound, count)`, `+Inf` last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(pub Vec<(f64, f64)>);

impl Buckets {
    /// The buckets of the unlabelled histogram `name` in a `/metrics` page.
    pub fn parse(text: &str, name: &str) -> Buckets {
        let prefix = format!("{name}_bucket{{le=\"");
        let mut out = Vec::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"}") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            if let Ok(c) = count.trim().parse::<f64>() {
                out.push((le, c));
            }
        }
        Buckets(out)
    }

    /// What was observed between `earlier` and this scrape.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, c)| {
                    let before = earlier
                        .0
                        .iter()
                        .find(|(l, _)| l == le)
                        .map_or(0.0, |(_, c)| *c);
                    (*le, c - before)
                })
                .collect(),
        )
    }

    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |(_, c)| *c)
    }

    /// The `q` quantile in seconds; NaN without observations. A quantile in the `+Inf`
    /// bucket is reported as the highest finite bound.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total <= 0.0 {
            return f64::NAN;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, c) in &self.0 {
            if *c >= rank {
                if le.is_infinite() {
                    return lower;
                }
                let in_bucket = c - below;
                if in_bucket <= 0.0 {
                    return *le;
                }
                return lower + (le - lower) * (rank - below) / in_bucket;
            }
            lower = *le;
            below = *c;
        }
        lower
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "\
# TYPE botd_daemon_overhead_seconds histogram
botd_daemon_overhead_seconds_bucket{le=\"0.0001\"} 10
botd_daemon_overhead_seconds_bucket{le=\"0.001\"} 90
botd_daemon_overhead_seconds_bucket{le=\"+Inf\"} 100
botd_daemon_overhead_seconds_sum 0.05
botd_daemon_overhead_seconds_count 100
";

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let b = Buckets::parse(PAGE, "botd_daemon_overhead_seconds");
        assert_eq!(b.0.len(), 3);
        assert_eq!(b.count(), 100.0);
        // The 50th of 100 is the 40th of the 80 in (0.0001, 0.001].
        let p50 = b.quantile(0.5);
        assert!((p50 - (0.0001 + 0.0009 * 40.0 / 80.0)).abs() < 1e-12);
        assert_eq!(b.quantile(0.99), 0.001);
        let none = b.since(&b);
        assert!(none.quantile(0.5).is_nan());
    }
}
