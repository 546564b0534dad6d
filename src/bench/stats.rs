//! Percentiles and the comparisons the report prints.
//!
//! Percentiles use linear interpolation between closest ranks (Hyndman & Fan type 7, the
//! default of numpy, R and spreadsheets' `PERCENTILE.INC`): for sorted `x[0..n]`,
//! `h = (n - 1) * q`, result `x[floor h] + (h - floor h) * (x[floor h + 1] - x[floor h])`.
//! With 30 runs p95 falls between the 28th and 29th smallest values instead of jumping to the
//! maximum, which keeps one outlier from deciding the p95.

/// p50 and p95 of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
}

/// The `q`-quantile (`0.0..=1.0`) of `values` by linear interpolation; `None` when empty.
/// NaNs are ignored.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let q = q.clamp(0.0, 1.0);
    let h = (sorted.len() - 1) as f64 * q;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// p50 and p95 of `values`; `None` when empty.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    Some(Summary {
        p50: percentile(values, 0.50)?,
        p95: percentile(values, 0.95)?,
    })
}

/// `isolated / shared` of two medians; `None` if either is missing or the shared one is zero.
pub fn ratio(isolated: Option<f64>, shared: Option<f64>) -> Option<f64> {
    match (isolated, shared) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// `isolated - shared` (a difference of percentiles, not a percentile of differences: runs of
/// the two modes are not paired one to one).
pub fn overhead(isolated: Option<f64>, shared: Option<f64>) -> Option<f64> {
    Some(isolated? - shared?)
}

/// Least-squares slope of `ys` against their index (bytes per job for runner RSS); `None` for
/// fewer than two points.
pub fn slope(ys: &[f64]) -> Option<f64> {
    let n = ys.len();
    if n < 2 {
        return None;
    }
    let mean_x = (n - 1) as f64 / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n as f64;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = i as f64 - mean_x;
        num += dx * (y - mean_y);
        den += dx * dx;
    }
    Some(num / den)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_on_known_data() {
        let data: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&data, 0.5), Some(5.5));
        // h = 9 * 0.95 = 8.55 -> 9 + 0.55 * (10 - 9)
        let p95 = percentile(&data, 0.95).expect("p95");
        assert!((p95 - 9.55).abs() < 1e-9, "{p95}");
        assert_eq!(percentile(&data, 0.0), Some(1.0));
        assert_eq!(percentile(&data, 1.0), Some(10.0));
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 0.5), Some(2.0));
        assert_eq!(percentile(&[7.0], 0.95), Some(7.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[f64::NAN, 4.0], 0.5), Some(4.0));
    }

    #[test]
    fn ratio_and_overhead() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(overhead(Some(3.5), Some(1.0)), Some(2.5));
        assert_eq!(overhead(Some(3.5), None), None);
    }

    #[test]
    fn slope_of_a_line() {
        let ys: Vec<f64> = (0..10).map(|i| 100.0 + 4.0 * f64::from(i)).collect();
        assert!((slope(&ys).expect("slope") - 4.0).abs() < 1e-9);
        assert_eq!(slope(&[1.0]), None);
    }
}
