//! Bitcoin mining as the energy layer sees it: the ASIC models of FACTS.md, each with a physical
//! model (hashrate against power, ramps, heat, sleep draw), and the economics (hashprice,
//! hashcost, the break-even power price) by FACTS.md's formulas.
//!
//! Physics and market figures are `f64`: they are measurements and estimates, and the planner's
//! linear program works in floats anyway. Money that is billed or booked stays `Decimal`
//! elsewhere.
//!
//! Where FACTS.md gives no figure, the defaults below are assumptions, named as such: sleep
//! draw, ramp times, the lowest power a profile reaches, and the curve's exponent.

/// Seconds in a day.
const DAY_S: f64 = 86_400.0;
/// 2^32: hashes per unit of difficulty.
const TWO_POW_32: f64 = 4_294_967_296.0;

/// One ASIC model and its physical behaviour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsicModel {
    pub name: &'static str,
    /// Hashrate at nominal power, TH/s.
    pub nominal_ths: f64,
    /// Nominal power at the wall, W.
    pub nominal_w: f64,
    /// Lowest power a hashing profile reaches (underclocked), W.
    pub min_w: f64,
    /// Highest power a profile reaches (overclocked), W.
    pub max_w: f64,
    /// Draw while asleep (hashboards and PSU output off; control board and fans idle), W.
    pub sleep_w: f64,
    /// Seconds from hashing at any power to asleep.
    pub ramp_down_s: f64,
    /// Seconds from asleep to hashing at nominal power.
    pub ramp_up_s: f64,
    /// Ambient temperature above which the firmware underclocks, °C.
    pub derate_from_c: f64,
    /// Ambient temperature above which it shuts down, °C.
    pub shutdown_c: f64,
}

/// Hashrate grows as power to this exponent (< 1: concave; underclocked units are more
/// efficient per TH, as every profile table shows). An assumption fitted to profile tables'
/// shape, not a published figure: at half power, J/TH is 84 % of nominal.
pub const CURVE_EXPONENT: f64 = 0.75;

/// The models of FACTS.md's table. Ramp times, sleep draw and the profile range are the
/// assumptions above: ramp down within seconds (hashboards off), up in two minutes (the wakeup
/// is tunable; fast wakeups shorten hardware life), sleep ≈ 15 W, profiles from half nominal
/// power to 15 % above it. The S21's heat limits (40 °C, 47 °C) are used for all.
pub const ASIC_MODELS: [AsicModel; 5] = [
    asic("Antminer S19 XP", 140.0, 3_010.0),
    asic("Antminer S21", 200.0, 3_500.0),
    asic("Antminer S21 Pro", 234.0, 3_531.0),
    asic("Antminer S21 XP", 270.0, 3_645.0),
    asic("Antminer S21+ Hydro", 319.0, 4_785.0),
];

const fn asic(name: &'static str, nominal_ths: f64, nominal_w: f64) -> AsicModel {
    AsicModel {
        name,
        nominal_ths,
        nominal_w,
        min_w: nominal_w * 0.5,
        max_w: nominal_w * 1.15,
        sleep_w: 15.0,
        ramp_down_s: 8.0,
        ramp_up_s: 120.0,
        derate_from_c: 40.0,
        shutdown_c: 47.0,
    }
}

/// The model called `name` (case-insensitive), if FACTS.md has it.
pub fn asic_model(name: &str) -> Option<&'static AsicModel> {
    ASIC_MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
}

impl AsicModel {
    /// Joules per terahash at nominal power.
    pub fn nominal_j_per_th(&self) -> f64 {
        self.nominal_w / self.nominal_ths
    }

    /// Hashrate (TH/s) while drawing `watts`: zero below the lowest profile (the unit cannot
    /// hash there), the concave curve between, flat above the highest.
    pub fn hashrate_ths(&self, watts: f64) -> f64 {
        if watts.is_nan() || watts < self.min_w {
            return 0.0;
        }
        let w = watts.min(self.max_w);
        self.nominal_ths * (w / self.nominal_w).powf(CURVE_EXPONENT)
    }

    /// Joules per terahash while drawing `watts` (infinite where it cannot hash).
    pub fn j_per_th(&self, watts: f64) -> f64 {
        let ths = self.hashrate_ths(watts);
        if ths > 0.0 {
            watts / ths
        } else {
            f64::INFINITY
        }
    }

    /// The highest power the firmware allows at `ambient_c`: the full range up to
    /// `derate_from_c`, falling linearly to the lowest profile at `shutdown_c`, and `None`
    /// above it (the unit shuts down).
    pub fn max_w_at(&self, ambient_c: f64) -> Option<f64> {
        if ambient_c > self.shutdown_c {
            return None;
        }
        if ambient_c <= self.derate_from_c {
            return Some(self.max_w);
        }
        let f = (ambient_c - self.derate_from_c) / (self.shutdown_c - self.derate_from_c);
        Some(self.max_w - f * (self.max_w - self.min_w))
    }

    /// The curve as `segments + 1` (watts, TH/s) breakpoints from the lowest to the highest
    /// profile, for the planner's piecewise-linear program. Concave, so a maximizing LP needs
    /// no integer variables to follow it.
    pub fn curve(&self, segments: usize) -> Vec<(f64, f64)> {
        let n = segments.max(1);
        (0..=n)
            .map(|i| {
                let w = self.min_w + (self.max_w - self.min_w) * i as f64 / n as f64;
                (w, self.hashrate_ths(w))
            })
            .collect()
    }
}

/// The Bitcoin network and market at some moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Network {
    /// Network difficulty.
    pub difficulty: f64,
    /// Block subsidy, BTC (3.125 since April 2024).
    pub subsidy_btc: f64,
    /// Average fees per block, BTC (smoothed over the last 144 blocks).
    pub fees_btc_per_block: f64,
    /// BTC price, USD.
    pub btc_usd: f64,
}

impl Network {
    /// Blocks a day that 1 PH/s wins on average.
    pub fn blocks_per_ph_day(&self) -> f64 {
        1e15 * DAY_S / (self.difficulty * TWO_POW_32)
    }

    /// BTC a day that 1 PH/s earns.
    pub fn btc_per_ph_day(&self) -> f64 {
        self.blocks_per_ph_day() * (self.subsidy_btc + self.fees_btc_per_block)
    }

    /// Hashprice: USD a day that 1 PH/s earns.
    pub fn hashprice_usd_per_ph_day(&self) -> f64 {
        self.btc_per_ph_day() * self.btc_usd
    }
}

/// Hashcost: USD a day that 1 PH/s costs in power at `usd_per_mwh`, for a fleet at `j_per_th`.
pub fn hashcost_usd_per_ph_day(j_per_th: f64, usd_per_mwh: f64) -> f64 {
    j_per_th * usd_per_mwh * 24.0 / 1000.0
}

/// The power price (USD/MWh) above which mining at `j_per_th` loses money at `hashprice`.
pub fn break_even_usd_per_mwh(hashprice_usd_per_ph_day: f64, j_per_th: f64) -> f64 {
    hashprice_usd_per_ph_day * 1000.0 / (24.0 * j_per_th)
}

/// Mining revenue, USD per MWh consumed, of a unit drawing `watts` at `hashprice`.
pub fn revenue_usd_per_mwh(model: &AsicModel, watts: f64, hashprice_usd_per_ph_day: f64) -> f64 {
    let j_per_th = model.j_per_th(watts);
    if j_per_th.is_finite() {
        break_even_usd_per_mwh(hashprice_usd_per_ph_day, j_per_th)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tolerance: f64) -> bool {
        (a - b).abs() <= tolerance
    }

    /// FACTS.md: difficulty 144.4T and BTC ≈ $68.5k in February 2026 put hashprice just
    /// under $30/PH/day.
    #[test]
    fn hashprice_matches_february_2026() {
        let feb = Network {
            difficulty: 144.4e12,
            subsidy_btc: 3.125,
            fees_btc_per_block: 0.02,
            btc_usd: 68_500.0,
        };
        let hashprice = feb.hashprice_usd_per_ph_day();
        assert!(close(hashprice, 30.0, 1.0), "{hashprice}");
        assert!(hashprice < 30.2);
    }

    /// Hashcost at the break-even price equals hashprice, for any efficiency.
    #[test]
    fn break_even_is_where_hashcost_meets_hashprice() {
        for j_per_th in [13.5, 15.0, 17.5, 21.5, 22.5] {
            for hashprice in [30.0, 39.82, 43.33] {
                let p = break_even_usd_per_mwh(hashprice, j_per_th);
                assert!(close(hashcost_usd_per_ph_day(j_per_th, p), hashprice, 1e-9));
            }
        }
        // FACTS.md's worked comparison: at $30/PH/day a 22.5 J/TH fleet earns ≈ $55/MWh and a
        // 13.5 J/TH one ≈ $93/MWh.
        assert!(close(break_even_usd_per_mwh(30.0, 22.5), 55.6, 0.1));
        assert!(close(break_even_usd_per_mwh(30.0, 13.5), 92.6, 0.1));
    }

    #[test]
    fn the_table_matches_facts() {
        let s19 = asic_model("antminer s19 xp").unwrap();
        assert!(close(s19.nominal_j_per_th(), 21.5, 0.01));
        let s21xp = asic_model("Antminer S21 XP").unwrap();
        assert!(close(s21xp.nominal_j_per_th(), 13.5, 0.01));
        assert!(asic_model("Antminer S9").is_none());
    }

    #[test]
    fn the_curve_is_concave_and_efficiency_improves_when_underclocked() {
        for m in &ASIC_MODELS {
            assert!(
                close(m.hashrate_ths(m.nominal_w), m.nominal_ths, 1e-9),
                "{}",
                m.name
            );
            assert_eq!(m.hashrate_ths(m.min_w - 1.0), 0.0);
            assert_eq!(m.hashrate_ths(f64::NAN), 0.0);
            assert_eq!(m.hashrate_ths(m.max_w * 2.0), m.hashrate_ths(m.max_w));
            assert!(m.j_per_th(m.min_w) < m.nominal_j_per_th());
            assert!(m.j_per_th(m.max_w) > m.nominal_j_per_th());
            let points = m.curve(6);
            assert_eq!(points.len(), 7);
            let slopes: Vec<f64> = points
                .windows(2)
                .map(|w| (w[1].1 - w[0].1) / (w[1].0 - w[0].0))
                .collect();
            assert!(
                slopes.windows(2).all(|s| s[1] < s[0]),
                "{}: slopes fall: {slopes:?}",
                m.name
            );
        }
    }

    #[test]
    fn heat_derates_then_shuts_down() {
        let m = asic_model("Antminer S21").unwrap();
        assert_eq!(m.max_w_at(25.0), Some(m.max_w));
        assert_eq!(m.max_w_at(40.0), Some(m.max_w));
        let hot = m.max_w_at(43.5).unwrap();
        assert!(hot < m.max_w && hot > m.min_w);
        assert_eq!(m.max_w_at(47.0), Some(m.min_w));
        assert_eq!(m.max_w_at(47.5), None);
    }

    #[test]
    fn revenue_per_mwh_is_zero_where_a_unit_cannot_hash() {
        let m = asic_model("Antminer S21").unwrap();
        assert_eq!(revenue_usd_per_mwh(m, 100.0, 40.0), 0.0);
        let at_nominal = revenue_usd_per_mwh(m, m.nominal_w, 40.0);
        assert!(close(at_nominal, 40.0 * 1000.0 / (24.0 * 17.5), 1e-9));
        assert!(revenue_usd_per_mwh(m, m.min_w, 40.0) > at_nominal);
    }
}
