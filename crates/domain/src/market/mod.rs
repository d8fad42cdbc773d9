//! Market inputs of the energy layer: the electricity price a site pays per interval, and the
//! Bitcoin market that sets what a hash is worth.
//!
//! A [`PriceSeries`] is the one shape every price source ends in — a fixed tariff, a CSV a user
//! brings ([`csv`]), or a synthetic trace shaped to ERCOT's statistics ([`synthetic`]) — so the
//! planner and the backtests never care where prices came from. Its invariants are checked once,
//! at construction: a uniform 5- or 15-minute interval (ERCOT's real-time settlement and
//! dispatch intervals), no gaps, every price finite and within the market's bounds.
//!
//! Prices are `f64` USD/MWh: they are market estimates fed to a linear program, not billed money.

pub mod csv;
pub mod horizon;
pub mod synthetic;

use serde::{Deserialize, Serialize};

use crate::mining::Network;

pub use horizon::{Coverage, PricePoint, horizon_prices};
pub use synthetic::SyntheticPrices;

/// ERCOT's system-wide offer cap, USD/MWh (FACTS.md). A price above it is not a real-time price
/// of any market we model, so it is refused rather than planned on.
pub const OFFER_CAP_USD_PER_MWH: f64 = 5_000.0;

/// The lowest price accepted, USD/MWh. Negative prices are real (wind nights pay loads to
/// consume); this bound only keeps nonsense such as `-1e300` out of the linear program. It is
/// far below any market floor we know of.
pub const PRICE_FLOOR_USD_PER_MWH: f64 = -5_000.0;

/// The length of one price interval: the markets we model settle every 5 or 15 minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IntervalLength {
    /// 5 minutes: ERCOT's security-constrained economic dispatch runs.
    FiveMinutes,
    /// 15 minutes: ERCOT's real-time settlement intervals.
    FifteenMinutes,
}

impl IntervalLength {
    /// The interval of `seconds` seconds, if it is one the markets use.
    pub fn from_seconds(seconds: i64) -> Option<Self> {
        match seconds {
            300 => Some(Self::FiveMinutes),
            900 => Some(Self::FifteenMinutes),
            _ => None,
        }
    }

    /// The interval of `minutes` minutes, if it is one the markets use.
    pub fn from_minutes(minutes: u32) -> Option<Self> {
        Self::from_seconds(i64::from(minutes) * 60)
    }

    pub fn seconds(self) -> i64 {
        match self {
            Self::FiveMinutes => 300,
            Self::FifteenMinutes => 900,
        }
    }

    pub fn minutes(self) -> u32 {
        match self {
            Self::FiveMinutes => 5,
            Self::FifteenMinutes => 15,
        }
    }

    /// The interval in hours, for energy (kW × h).
    pub fn hours(self) -> f64 {
        self.seconds() as f64 / 3_600.0
    }

    /// Intervals in one hour.
    pub fn per_hour(self) -> usize {
        match self {
            Self::FiveMinutes => 12,
            Self::FifteenMinutes => 4,
        }
    }
}

/// Why market input was refused. Every CSV error names its 1-based line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MarketError {
    #[error("the price series is empty")]
    Empty,
    #[error("interval length {seconds} s is not 5 or 15 minutes")]
    UnsupportedInterval { seconds: i64 },
    #[error("price #{index} is {value}: prices must be finite")]
    NotFinite { index: usize, value: f64 },
    #[error(
        "price #{index} is {value} USD/MWh, above the offer cap of {OFFER_CAP_USD_PER_MWH} USD/MWh"
    )]
    AboveCap { index: usize, value: f64 },
    #[error(
        "price #{index} is {value} USD/MWh, below the floor of {PRICE_FLOOR_USD_PER_MWH} USD/MWh"
    )]
    BelowFloor { index: usize, value: f64 },
    #[error("the series would end after the year 9999")]
    TooLong,
    #[error("line {line}: {problem}")]
    Csv { line: usize, problem: CsvProblem },
    #[error("the CSV has {rows} price row(s); at least two are needed to tell the interval")]
    TooFewRows { rows: usize },
    #[error("Bitcoin market: {field} is {value}; {rule}")]
    BadNetwork {
        field: &'static str,
        value: f64,
        rule: &'static str,
    },
    #[error("the Bitcoin market has no data point")]
    NoNetwork,
}

/// What is wrong with one line of a price CSV.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CsvProblem {
    #[error("expected 2 fields `timestamp,usd_per_mwh`, found {found}")]
    FieldCount { found: usize },
    #[error("`{value}` is neither unix seconds nor an RFC 3339 timestamp")]
    Timestamp { value: String },
    #[error("`{value}` is not a number")]
    Price { value: String },
    #[error("the price {value} is not finite")]
    NotFinite { value: f64 },
    #[error("the price {value} USD/MWh is above the offer cap of {OFFER_CAP_USD_PER_MWH}")]
    AboveCap { value: f64 },
    #[error("the price {value} USD/MWh is below the floor of {PRICE_FLOOR_USD_PER_MWH}")]
    BelowFloor { value: f64 },
    #[error(
        "the first two rows are {step_s} s apart; only 5- or 15-minute intervals are supported"
    )]
    UnsupportedInterval { step_s: i64 },
    #[error("timestamp {timestamp} repeats the previous row")]
    Duplicate { timestamp: i64 },
    #[error("timestamp {timestamp} is before the previous row's {previous}")]
    OutOfOrder { timestamp: i64, previous: i64 },
    #[error("{missing} interval(s) missing between {previous} and {timestamp}")]
    Gap {
        previous: i64,
        timestamp: i64,
        missing: i64,
    },
    #[error(
        "{step_s} s after the previous row, but the series has {interval_s} s intervals (mixed resolutions)"
    )]
    MixedResolution { step_s: i64, interval_s: i64 },
}

/// Electricity prices of one site, one per interval, in USD/MWh, at a uniform interval.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PriceSeries {
    start_unix_s: i64,
    interval: IntervalLength,
    usd_per_mwh: Vec<f64>,
}

/// Checks one price against the market's bounds.
fn check_price(index: usize, value: f64) -> Result<f64, MarketError> {
    if !value.is_finite() {
        Err(MarketError::NotFinite { index, value })
    } else if value > OFFER_CAP_USD_PER_MWH {
        Err(MarketError::AboveCap { index, value })
    } else if value < PRICE_FLOOR_USD_PER_MWH {
        Err(MarketError::BelowFloor { index, value })
    } else {
        Ok(value)
    }
}

impl PriceSeries {
    /// A series starting at `start_unix_s` (the start of its first interval).
    pub fn new(
        start_unix_s: i64,
        interval: IntervalLength,
        usd_per_mwh: Vec<f64>,
    ) -> Result<Self, MarketError> {
        if usd_per_mwh.is_empty() {
            return Err(MarketError::Empty);
        }
        for (index, &value) in usd_per_mwh.iter().enumerate() {
            check_price(index, value)?;
        }
        // Keep every interval's timestamp representable (and within RFC 3339's years).
        let span = i64::try_from(usd_per_mwh.len())
            .ok()
            .and_then(|n| n.checked_mul(interval.seconds()))
            .and_then(|s| s.checked_add(start_unix_s));
        match span {
            Some(end) if end <= 253_402_300_799 => {}
            _ => return Err(MarketError::TooLong),
        }
        Ok(Self {
            start_unix_s,
            interval,
            usd_per_mwh,
        })
    }

    /// A fixed tariff: the same price for `intervals` intervals.
    pub fn fixed(
        start_unix_s: i64,
        interval: IntervalLength,
        usd_per_mwh: f64,
        intervals: usize,
    ) -> Result<Self, MarketError> {
        check_price(0, usd_per_mwh)?;
        Self::new(start_unix_s, interval, vec![usd_per_mwh; intervals])
    }

    /// Parses `timestamp,usd_per_mwh` rows; see [`csv::parse`].
    pub fn parse_csv(text: &str) -> Result<Self, MarketError> {
        csv::parse(text)
    }

    pub fn start_unix_s(&self) -> i64 {
        self.start_unix_s
    }

    pub fn interval(&self) -> IntervalLength {
        self.interval
    }

    pub fn len(&self) -> usize {
        self.usd_per_mwh.len()
    }

    /// Always false: a series has at least one interval.
    pub fn is_empty(&self) -> bool {
        self.usd_per_mwh.is_empty()
    }

    pub fn prices(&self) -> &[f64] {
        &self.usd_per_mwh
    }

    /// The start of interval `index`, unix seconds.
    pub fn timestamp(&self, index: usize) -> i64 {
        // Cannot overflow: `new` checked the end of the series.
        self.start_unix_s + index as i64 * self.interval.seconds()
    }

    /// The mean price, USD/MWh: what a flat load pays on average.
    pub fn mean(&self) -> f64 {
        self.usd_per_mwh.iter().sum::<f64>() / self.usd_per_mwh.len() as f64
    }

    /// How many hours, taken from the most expensive down, carry half of what a flat load pays
    /// over the whole series (FACTS.md: about 1,200 of 2024's 8,784 hours in ERCOT).
    pub fn hours_carrying_half_the_cost(&self) -> f64 {
        let mut sorted = self.usd_per_mwh.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let half = sorted.iter().sum::<f64>() / 2.0;
        let mut acc = 0.0;
        let mut n = 0usize;
        for p in sorted {
            if acc >= half {
                break;
            }
            acc += p;
            n += 1;
        }
        n as f64 * self.interval.hours()
    }
}

/// The Bitcoin network as a site file states it; [`NetworkSpec::check`] turns it into a
/// [`Network`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    pub btc_usd: f64,
    pub difficulty: f64,
    /// BTC per block; 3.125 since April 2024.
    #[serde(default = "default_subsidy")]
    pub subsidy_btc: f64,
    /// Average fees per block, BTC.
    #[serde(default)]
    pub fees_btc_per_block: f64,
}

fn default_subsidy() -> f64 {
    3.125
}

impl NetworkSpec {
    pub fn check(&self) -> Result<Network, MarketError> {
        let positive = |field, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(value)
            } else {
                Err(MarketError::BadNetwork {
                    field,
                    value,
                    rule: "it must be a positive number",
                })
            }
        };
        let non_negative = |field, value: f64| {
            if value.is_finite() && value >= 0.0 {
                Ok(value)
            } else {
                Err(MarketError::BadNetwork {
                    field,
                    value,
                    rule: "it must be a number ≥ 0",
                })
            }
        };
        Ok(Network {
            btc_usd: positive("btc_usd", self.btc_usd)?,
            difficulty: positive("difficulty", self.difficulty)?,
            subsidy_btc: non_negative("subsidy_btc", self.subsidy_btc)?,
            fees_btc_per_block: non_negative("fees_btc_per_block", self.fees_btc_per_block)?,
        })
    }
}

/// The Bitcoin market over a run of intervals: one [`Network`] for all of them, or one per
/// interval. It turns each into hashprice by FACTS.md's formula (see [`Network`]).
#[derive(Debug, Clone, PartialEq)]
pub struct BitcoinMarket {
    points: Vec<Network>,
}

impl BitcoinMarket {
    /// The same market in every interval.
    pub fn fixed(network: Network) -> Result<Self, MarketError> {
        Self::per_interval(vec![network])
    }

    /// One market per interval; the last one holds for any interval past the end.
    pub fn per_interval(points: Vec<Network>) -> Result<Self, MarketError> {
        if points.is_empty() {
            return Err(MarketError::NoNetwork);
        }
        for n in &points {
            NetworkSpec {
                btc_usd: n.btc_usd,
                difficulty: n.difficulty,
                subsidy_btc: n.subsidy_btc,
                fees_btc_per_block: n.fees_btc_per_block,
            }
            .check()?;
        }
        Ok(Self { points })
    }

    /// The market in interval `index`.
    pub fn network(&self, index: usize) -> &Network {
        // `points` is never empty (checked in `per_interval`).
        &self.points[index.min(self.points.len() - 1)]
    }

    /// Hashprice in interval `index`, USD per PH/s per day.
    pub fn hashprice_usd_per_ph_day(&self, index: usize) -> f64 {
        self.network(index).hashprice_usd_per_ph_day()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_refuse_bad_prices() {
        let cases: &[(Vec<f64>, Option<MarketError>)] = &[
            (vec![25.0, -12.0, 5_000.0], None),
            (vec![], Some(MarketError::Empty)),
            (
                vec![1.0, f64::NAN],
                Some(MarketError::NotFinite {
                    index: 1,
                    value: f64::NAN,
                }),
            ),
            (
                vec![5_000.01],
                Some(MarketError::AboveCap {
                    index: 0,
                    value: 5_000.01,
                }),
            ),
            (
                vec![-1e300],
                Some(MarketError::BelowFloor {
                    index: 0,
                    value: -1e300,
                }),
            ),
        ];
        for (prices, want) in cases {
            let got = PriceSeries::new(0, IntervalLength::FifteenMinutes, prices.clone());
            match (got, want) {
                (Ok(_), None) => {}
                // NaN != NaN: compare the rendered error.
                (Err(e), Some(w)) => assert_eq!(e.to_string(), w.to_string(), "{prices:?}"),
                (got, want) => panic!("{prices:?}: got {got:?}, want {want:?}"),
            }
        }
        assert_eq!(
            PriceSeries::new(i64::MAX - 10, IntervalLength::FiveMinutes, vec![1.0]),
            Err(MarketError::TooLong)
        );
    }

    #[test]
    fn a_fixed_tariff_repeats_its_price() {
        let s = PriceSeries::fixed(1_700_000_100, IntervalLength::FiveMinutes, 42.0, 3).unwrap();
        assert_eq!(s.prices(), &[42.0, 42.0, 42.0]);
        assert_eq!(s.timestamp(2), 1_700_000_700);
        assert_eq!(s.mean(), 42.0);
        assert!(PriceSeries::fixed(0, IntervalLength::FiveMinutes, 42.0, 0).is_err());
    }

    #[test]
    fn interval_lengths() {
        assert_eq!(
            IntervalLength::from_seconds(900),
            Some(IntervalLength::FifteenMinutes)
        );
        assert_eq!(
            IntervalLength::from_minutes(5),
            Some(IntervalLength::FiveMinutes)
        );
        assert_eq!(IntervalLength::from_seconds(600), None);
        assert_eq!(IntervalLength::FifteenMinutes.hours(), 0.25);
        assert_eq!(IntervalLength::FiveMinutes.per_hour(), 12);
    }

    #[test]
    fn hours_carrying_half_the_cost() {
        // One expensive hour carries exactly half of the cost of a flat 99-hour day.
        let mut prices = vec![10.0; 4 * 99];
        prices.extend([990.0; 4]);
        let s = PriceSeries::new(0, IntervalLength::FifteenMinutes, prices).unwrap();
        assert_eq!(s.hours_carrying_half_the_cost(), 1.0);
    }

    /// FACTS.md, February 2026: difficulty 144.4T at $68.5k puts hashprice just under $30.
    #[test]
    fn bitcoin_market_gives_hashprice_per_interval() {
        let feb = NetworkSpec {
            btc_usd: 68_500.0,
            difficulty: 144.4e12,
            subsidy_btc: 3.125,
            fees_btc_per_block: 0.02,
        }
        .check()
        .unwrap();
        let doubled = Network {
            btc_usd: 137_000.0,
            ..feb
        };
        let m = BitcoinMarket::per_interval(vec![feb, doubled]).unwrap();
        let h0 = m.hashprice_usd_per_ph_day(0);
        assert!((29.0..30.2).contains(&h0), "{h0}");
        assert!((m.hashprice_usd_per_ph_day(1) - 2.0 * h0).abs() < 1e-9);
        // Past the end, the last point holds.
        assert_eq!(m.hashprice_usd_per_ph_day(7), m.hashprice_usd_per_ph_day(1));
        assert_eq!(
            BitcoinMarket::per_interval(vec![]),
            Err(MarketError::NoNetwork)
        );
    }

    #[test]
    fn bad_networks_are_refused() {
        let good = NetworkSpec {
            btc_usd: 68_500.0,
            difficulty: 144.4e12,
            subsidy_btc: 3.125,
            fees_btc_per_block: 0.0,
        };
        let cases = [
            (
                NetworkSpec {
                    btc_usd: 0.0,
                    ..good
                },
                "btc_usd",
            ),
            (
                NetworkSpec {
                    difficulty: f64::NAN,
                    ..good
                },
                "difficulty",
            ),
            (
                NetworkSpec {
                    subsidy_btc: -1.0,
                    ..good
                },
                "subsidy_btc",
            ),
            (
                NetworkSpec {
                    fees_btc_per_block: f64::INFINITY,
                    ..good
                },
                "fees_btc_per_block",
            ),
        ];
        for (spec, field) in cases {
            match spec.check() {
                Err(MarketError::BadNetwork { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let toml_like: NetworkSpec =
            serde_json::from_str(r#"{"btc_usd": 68500, "difficulty": 144.4e12}"#).unwrap();
        assert_eq!(toml_like.subsidy_btc, 3.125);
        assert!(
            serde_json::from_str::<NetworkSpec>(r#"{"btc_usd": 1, "difficulty": 1, "price": 2}"#)
                .is_err()
        );
    }
}
