//! A site's prices over a planning horizon, from what is known: the price series imported for
//! the site (points of 5 or 15 minutes, perhaps several imports, perhaps with holes) and its
//! fixed tariff. Each planning interval costs the time-weighted mean of the points covering
//! it, and the tariff for any part no point covers — the documented fallback for a series that
//! ends, starts later or has a gap: the planner never plans on a price nobody gave it, and
//! never refuses to plan because a market file ran out.

use super::{IntervalLength, MarketError, PriceSeries};

/// One imported price: `usd_per_mwh` from `start_unix_s` for `interval`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PricePoint {
    pub start_unix_s: i64,
    pub interval: IntervalLength,
    pub usd_per_mwh: f64,
}

impl PricePoint {
    fn end_unix_s(&self) -> i64 {
        self.start_unix_s + self.interval.seconds()
    }
}

/// The points of a series, one per interval.
pub fn points_of(series: &PriceSeries) -> Vec<PricePoint> {
    series
        .prices()
        .iter()
        .enumerate()
        .map(|(i, &usd_per_mwh)| PricePoint {
            start_unix_s: series.timestamp(i),
            interval: series.interval(),
            usd_per_mwh,
        })
        .collect()
}

/// What the horizon's prices are made of, for the plan's record.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Coverage {
    /// Seconds of the horizon priced by imported points.
    pub from_series_s: i64,
    /// Seconds priced at the tariff.
    pub from_tariff_s: i64,
}

/// The prices of `intervals` intervals of `interval` from `start_unix_s`: imported `points`
/// where they cover, `tariff` elsewhere. Points may come in any order; where two overlap (they
/// should not: an import replaces what it covers) the later in the slice wins.
pub fn horizon_prices(
    points: &[PricePoint],
    tariff_usd_per_mwh: f64,
    start_unix_s: i64,
    interval: IntervalLength,
    intervals: usize,
) -> Result<(PriceSeries, Coverage), MarketError> {
    let len = interval.seconds();
    let mut coverage = Coverage {
        from_series_s: 0,
        from_tariff_s: 0,
    };
    let prices = (0..intervals)
        .map(|i| {
            let a = start_unix_s + i as i64 * len;
            let b = a + len;
            // Pieces of [a, b) each point covers, later points overriding earlier ones.
            let mut pieces: Vec<(i64, i64, f64)> = Vec::new();
            for p in points
                .iter()
                .filter(|p| p.start_unix_s < b && p.end_unix_s() > a)
            {
                let (s, e) = (p.start_unix_s.max(a), p.end_unix_s().min(b));
                pieces = pieces
                    .into_iter()
                    .flat_map(|(ps, pe, v)| {
                        [(ps, pe.min(s), v), (ps.max(e), pe, v)]
                            .into_iter()
                            .filter(|(x, y, _)| x < y)
                    })
                    .collect();
                pieces.push((s, e, p.usd_per_mwh));
            }
            let covered: i64 = pieces.iter().map(|(s, e, _)| e - s).sum();
            let weighted: f64 = pieces.iter().map(|(s, e, v)| (e - s) as f64 * v).sum();
            coverage.from_series_s += covered;
            coverage.from_tariff_s += len - covered;
            (weighted + (len - covered) as f64 * tariff_usd_per_mwh) / len as f64
        })
        .collect();
    Ok((PriceSeries::new(start_unix_s, interval, prices)?, coverage))
}

#[cfg(test)]
mod tests {
    use super::*;
    use IntervalLength::{FifteenMinutes, FiveMinutes};

    fn point(start: i64, interval: IntervalLength, usd: f64) -> PricePoint {
        PricePoint {
            start_unix_s: start,
            interval,
            usd_per_mwh: usd,
        }
    }

    #[test]
    fn no_points_is_the_tariff() {
        let (s, c) = horizon_prices(&[], 40.0, 0, FifteenMinutes, 4).unwrap();
        assert_eq!(s.prices(), &[40.0; 4]);
        assert_eq!(c.from_series_s, 0);
        assert_eq!(c.from_tariff_s, 3600);
    }

    #[test]
    fn five_minute_points_average_into_a_fifteen_minute_interval_and_the_tariff_fills_the_rest() {
        let points = [
            point(900, FiveMinutes, 30.0),
            point(1200, FiveMinutes, 60.0),
            point(1500, FiveMinutes, 90.0),
            // Half of the third interval, then the series ends.
            point(1800, FiveMinutes, -20.0),
        ];
        let (s, c) = horizon_prices(&points, 40.0, 0, FifteenMinutes, 3).unwrap();
        assert_eq!(s.prices()[0], 40.0, "before the series: the tariff");
        assert!((s.prices()[1] - 60.0).abs() < 1e-9);
        let third = (-20.0 + 2.0 * 40.0) / 3.0;
        assert!((s.prices()[2] - third).abs() < 1e-9, "{}", s.prices()[2]);
        assert_eq!(c.from_series_s, 1200);
        assert_eq!(c.from_tariff_s, 2700 - 1200);
    }

    #[test]
    fn a_fifteen_minute_point_prices_each_five_minute_interval_it_covers() {
        let points = [point(0, FifteenMinutes, 5000.0)];
        let (s, _) = horizon_prices(&points, 40.0, 300, FiveMinutes, 3).unwrap();
        assert_eq!(s.prices(), &[5000.0, 5000.0, 40.0]);
    }

    #[test]
    fn a_later_point_overrides_an_earlier_one_where_they_overlap() {
        let points = [
            point(0, FifteenMinutes, 100.0),
            point(300, FiveMinutes, 10.0),
        ];
        let (s, c) = horizon_prices(&points, 40.0, 0, FifteenMinutes, 1).unwrap();
        assert!((s.prices()[0] - 70.0).abs() < 1e-9, "{}", s.prices()[0]);
        assert_eq!(c.from_series_s, 900);
    }

    #[test]
    fn a_tariff_the_market_refuses_is_an_error() {
        assert!(horizon_prices(&[], f64::NAN, 0, FifteenMinutes, 1).is_err());
        assert!(horizon_prices(&[], 40.0, 0, FifteenMinutes, 0).is_err());
    }
}
