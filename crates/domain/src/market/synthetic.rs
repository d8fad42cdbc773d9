//! Synthetic electricity price traces shaped to ERCOT's real-time statistics (FACTS.md), for
//! backtests and demos: no package ships ERCOT data, and a seeded trace makes a backtest
//! repeatable.
//!
//! The shape, in three layers:
//! 1. a lognormal base: its log follows an AR(1) walk (prices persist for hours) around the
//!    median, plus a daily shape peaking in the late afternoon (local time);
//! 2. wind nights: on some nights, a few hours of negative prices;
//! 3. scarcity episodes: a few afternoons or evenings a month, one to four hours of high prices
//!    whose peak follows a Pareto tail, capped at the $5,000 offer cap.
//!
//! The defaults give a year whose mean lands near ERCOT's 2024 real-time average (≈ $32/MWh;
//! 30–35 over seeds) and whose most expensive ~1,200 hours (800–1,400 over seeds) carry half of
//! what a flat load pays — FACTS.md's figures; the tests check both, loosely, for several seeds.
//! To get both at once the base sits a little low (median $19, mean ≈ $23/MWh): the scarcity
//! episodes carry the rest, as they do in ERCOT.
//!
//! Random numbers come from `rand`'s `StdRng` seeded with [`SyntheticPrices::seed`]: the same
//! seed gives the same trace with the same `rand` version. Normal draws are Box–Muller.

use std::f64::consts::PI;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::{IntervalLength, MarketError, OFFER_CAP_USD_PER_MWH, PriceSeries};

/// The generator's parameters. [`Default`] is shaped to ERCOT 2024.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticPrices {
    pub seed: u64,
    /// Median of the base price, USD/MWh.
    pub median_usd_per_mwh: f64,
    /// Standard deviation of the base price's log.
    pub sigma: f64,
    /// How much of the base's log deviation survives one hour (AR(1) coefficient per hour).
    pub persistence_per_hour: f64,
    /// Amplitude of the daily shape, in log units (0.3 ≈ ±35 %).
    pub daily_amplitude: f64,
    /// Local hour at which the daily shape peaks.
    pub daily_peak_hour: f64,
    /// Local time minus UTC, hours (Texas: -6).
    pub utc_offset_hours: i32,
    /// Expected nights a year with a run of negative prices.
    pub negative_nights_per_year: f64,
    /// Expected scarcity episodes a year.
    pub spike_episodes_per_year: f64,
    /// Pareto scale of an episode's peak, USD/MWh (the lowest peak).
    pub spike_scale_usd_per_mwh: f64,
    /// Pareto tail index of an episode's peak (smaller: heavier tail).
    pub spike_tail_alpha: f64,
}

impl Default for SyntheticPrices {
    fn default() -> Self {
        Self {
            seed: 0,
            median_usd_per_mwh: 19.0,
            sigma: 0.6,
            persistence_per_hour: 0.9,
            daily_amplitude: 0.3,
            daily_peak_hour: 18.0,
            utc_offset_hours: -6,
            negative_nights_per_year: 40.0,
            spike_episodes_per_year: 100.0,
            spike_scale_usd_per_mwh: 160.0,
            spike_tail_alpha: 1.3,
        }
    }
}

/// One scarcity episode: its first and last interval (inclusive) and its peak.
struct Episode {
    first: usize,
    last: usize,
    peak: f64,
}

impl SyntheticPrices {
    /// The default shape with another seed.
    pub fn with_seed(seed: u64) -> Self {
        Self {
            seed,
            ..Self::default()
        }
    }

    /// A trace of `intervals` intervals starting at `start_unix_s`.
    pub fn generate(
        &self,
        start_unix_s: i64,
        interval: IntervalLength,
        intervals: usize,
    ) -> Result<PriceSeries, MarketError> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let dt_h = interval.hours();
        let per_hour = interval.per_hour();
        let per_day = per_hour * 24;
        let phi = self.persistence_per_hour.clamp(0.0, 0.999_999).powf(dt_h);
        let shock = (1.0 - phi * phi).sqrt() * self.sigma.max(0.0);
        let offset_s = i64::from(self.utc_offset_hours) * 3_600;
        let local_hour = |i: usize| {
            let t = start_unix_s + i as i64 * interval.seconds() + offset_s;
            t.rem_euclid(86_400) as f64 / 3_600.0
        };

        // Events are drawn per local day, so their hours are the local hours they belong to.
        let first_local_midnight = {
            let t0 = start_unix_s + offset_s;
            let into_day = t0.rem_euclid(86_400);
            // Intervals from the start to the first local midnight at or before it (≤ 0).
            -(into_day / interval.seconds())
        };
        let day_start = |day: usize| first_local_midnight + (day * per_day) as i64;
        let days = intervals.div_ceil(per_day) + 1;
        let p_negative = (self.negative_nights_per_year / 365.0).clamp(0.0, 1.0);
        let p_spike = (self.spike_episodes_per_year / 365.0).clamp(0.0, 1.0);
        let mut negative = vec![false; intervals];
        let mut episodes = Vec::new();
        for day in 0..days {
            let midnight = day_start(day);
            if rng.random::<f64>() < p_negative {
                // A run of 1–5 hours starting between 00:00 and 04:00.
                let from = midnight + (rng.random_range(0..4) * per_hour) as i64;
                let len = rng.random_range(1..=5) * per_hour;
                for i in from..from + len as i64 {
                    if let Some(slot) = usize::try_from(i).ok().and_then(|i| negative.get_mut(i)) {
                        *slot = true;
                    }
                }
            }
            if rng.random::<f64>() < p_spike {
                // 1–4 hours starting between 14:00 and 21:00.
                let from = midnight + (rng.random_range(14..21) * per_hour) as i64;
                let len = rng.random_range(1..=4) * per_hour;
                let u: f64 = 1.0 - rng.random::<f64>();
                let alpha = self.spike_tail_alpha.max(0.1);
                let peak = (self.spike_scale_usd_per_mwh * u.powf(-1.0 / alpha))
                    .min(OFFER_CAP_USD_PER_MWH);
                let last = from + len as i64 - 1;
                if last >= 0 && from < intervals as i64 {
                    episodes.push(Episode {
                        first: from.max(0) as usize,
                        last: (last as usize).min(intervals - 1),
                        peak,
                    });
                }
            }
        }

        let mut prices = Vec::with_capacity(intervals);
        let mut x = normal(&mut rng) * self.sigma.max(0.0);
        for (i, &wind) in negative.iter().enumerate() {
            x = phi * x + shock * normal(&mut rng);
            let shape = self.daily_amplitude
                * (2.0 * PI * (local_hour(i) - self.daily_peak_hour) / 24.0).cos();
            let mut p = self.median_usd_per_mwh * (x + shape).exp();
            if wind {
                p = -rng.random_range(0.0..25.0);
            }
            prices.push(p.min(OFFER_CAP_USD_PER_MWH));
        }
        for e in episodes {
            for p in &mut prices[e.first..=e.last] {
                // Scarcity prices wander between 40 % and 100 % of the episode's peak.
                let level = e.peak * rng.random_range(0.4..=1.0);
                *p = p.max(level).min(OFFER_CAP_USD_PER_MWH);
            }
        }
        PriceSeries::new(start_unix_s, interval, prices)
    }
}

/// A standard normal draw (Box–Muller).
fn normal(rng: &mut StdRng) -> f64 {
    // 1 − [0, 1) is (0, 1]: the logarithm stays finite.
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-01T00:00:00Z.
    const START: i64 = 1_704_067_200;
    const YEAR_15MIN: usize = 365 * 96;

    #[test]
    fn a_year_looks_like_ercot() {
        for seed in [1, 2, 3, 4, 5, 6] {
            let s = SyntheticPrices::with_seed(seed)
                .generate(START, IntervalLength::FifteenMinutes, YEAR_15MIN)
                .unwrap();
            let mean = s.mean();
            assert!((26.0..=40.0).contains(&mean), "seed {seed}: mean {mean}");
            let half = s.hours_carrying_half_the_cost();
            assert!((600.0..=2_000.0).contains(&half), "seed {seed}: {half} h");
            let negative = s.prices().iter().filter(|p| **p < 0.0).count();
            assert!(
                (50..=YEAR_15MIN / 10).contains(&negative),
                "seed {seed}: {negative} negative intervals"
            );
            let max = s.prices().iter().copied().fold(f64::MIN, f64::max);
            assert!(
                (1_000.0..=OFFER_CAP_USD_PER_MWH).contains(&max),
                "seed {seed}: max {max}"
            );
            let mut sorted = s.prices().to_vec();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            assert!(
                (15.0..=30.0).contains(&median),
                "seed {seed}: median {median}"
            );
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_trace() {
        let a = SyntheticPrices::with_seed(7).generate(START, IntervalLength::FiveMinutes, 2_000);
        let b = SyntheticPrices::with_seed(7).generate(START, IntervalLength::FiveMinutes, 2_000);
        let c = SyntheticPrices::with_seed(8).generate(START, IntervalLength::FiveMinutes, 2_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn spikes_land_in_local_afternoons_and_negatives_at_night() {
        let generator = SyntheticPrices::with_seed(3);
        let s = generator
            .generate(START, IntervalLength::FifteenMinutes, YEAR_15MIN)
            .unwrap();
        for (i, &p) in s.prices().iter().enumerate() {
            let local_h = ((s.timestamp(i) + i64::from(generator.utc_offset_hours) * 3_600)
                .rem_euclid(86_400))
                / 3_600;
            if p < 0.0 {
                assert!(local_h < 9, "negative price at local hour {local_h}");
            }
            if p >= 1_000.0 {
                assert!(
                    (14..=23).contains(&local_h),
                    "spike {p} at local hour {local_h}"
                );
            }
        }
    }

    #[test]
    fn short_and_odd_starts_work() {
        // A start that is not on a local midnight, and a single interval.
        for (start, n) in [(START + 7 * 900, 1), (START - 13 * 300, 500)] {
            let s = SyntheticPrices::default()
                .generate(start, IntervalLength::FiveMinutes, n)
                .unwrap();
            assert_eq!(s.len(), n);
        }
        assert_eq!(
            SyntheticPrices::default().generate(START, IntervalLength::FiveMinutes, 0),
            Err(MarketError::Empty)
        );
    }
}
