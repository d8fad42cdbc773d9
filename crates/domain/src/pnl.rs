//! One P&L per site and for the fleet: what each site's power earned and cost, per interval
//! (15 minutes), day or month (UTC), booked from what was measured — the site meter, the
//! miners' own hashrate, billed usage and demand-response (DR) events — at the Bitcoin market
//! in force at the time.
//!
//! The money lines use the planner's vocabulary (`planner::account`): mining revenue, inference
//! revenue, DR payment, energy cost, margin; the P&L adds the avoided peak charge of a DR event
//! that carries a peak tariff, and margin per MWh.
//!
//! **Energy reconciles with the meter.** Energy is booked from the meter's cumulative kWh
//! register: between two consecutive readings the booked energy is the register's difference,
//! spread evenly over the time between them, so the energy booked over any bucketing sums to
//! the register's delta over the range (to float rounding). Where the register is missing or
//! went backwards (a meter replaced), the meter's kW is integrated trapezoidally, but only
//! across gaps of at most [`MAX_GAP_MS`]; longer gaps are left unbooked and reported
//! (`unmetered_s`), never guessed. Every instant belongs to one pair of consecutive readings,
//! so no time is counted twice. Samples without a meter reading (a meter fault) are skipped,
//! and the register's delta spans the fault.
//!
//! **Units.** Energy and hashrate are measurements (`f64`, as in `mining`). Money is `Decimal`,
//! rounded to cents per line; totals are sums of the rounded lines, so the books add up and the
//! fleet is exactly the sum of its sites. BTC is `Decimal` rounded to 8 places (one satoshi,
//! the chain's own unit) per line: the figure is an expected value from hashrate and difficulty,
//! not a pool payout, and a `Decimal` multiplies by the USD price without leaving money exact.
//!
//! Pure: times, samples, usage, events and the market are inputs; nothing reads a clock.

use rust_decimal::Decimal;
use rust_decimal::prelude::FromPrimitive;
use serde::Serialize;
use time::{Date, Month, OffsetDateTime, UtcOffset};

use crate::dr::{self, Metered};
use crate::mining::Network;

/// The interval of `by=interval`: 15 minutes, the grid's settlement interval.
pub const INTERVAL_MS: i64 = 15 * 60_000;
/// A day.
pub const DAY_MS: i64 = 86_400_000;
/// The most buckets one P&L holds: a month of 15-minute intervals (2,976) fits, a longer
/// range must use days or months.
pub const MAX_BUCKETS: usize = 3_000;
/// The longest range of one P&L: a leap year. Every sample of the range is read.
pub const MAX_RANGE_MS: i64 = 366 * DAY_MS;
/// The longest gap across which the meter's kW or the miners' hashrate is integrated. Agents
/// report every few seconds; a longer silence means nothing is known about the load then.
pub const MAX_GAP_MS: i64 = 15 * 60_000;

/// The bucket size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    Interval,
    Day,
    Month,
}

impl By {
    /// `interval`, `day` or `month`.
    pub fn parse(s: &str) -> Option<By> {
        match s {
            "interval" => Some(By::Interval),
            "day" => Some(By::Day),
            "month" => Some(By::Month),
            _ => None,
        }
    }
}

/// Why a P&L cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PnlError {
    #[error("`to` must be after `from`")]
    EmptyRange,
    #[error("the range is {days} days; a P&L covers at most 366")]
    RangeTooLong { days: i64 },
    #[error("{n} buckets of {by:?} are too many (at most {MAX_BUCKETS}); use a larger `by`")]
    TooManyBuckets { n: usize, by: By },
    #[error("a time outside the calendar: unix ms {0}")]
    OutOfCalendar(i64),
}

fn month_start(ms: i64) -> Result<i64, PnlError> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|_| PnlError::OutOfCalendar(ms))?;
    let first = Date::from_calendar_date(t.year(), t.month(), 1)
        .map_err(|_| PnlError::OutOfCalendar(ms))?;
    Ok(first
        .midnight()
        .assume_offset(UtcOffset::UTC)
        .unix_timestamp()
        * 1000)
}

fn next_month(start_ms: i64) -> Result<i64, PnlError> {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(start_ms) * 1_000_000)
        .map_err(|_| PnlError::OutOfCalendar(start_ms))?;
    let (y, m) = if t.month() == Month::December {
        (t.year() + 1, Month::January)
    } else {
        (t.year(), t.month().next())
    };
    let first = Date::from_calendar_date(y, m, 1).map_err(|_| PnlError::OutOfCalendar(start_ms))?;
    Ok(first
        .midnight()
        .assume_offset(UtcOffset::UTC)
        .unix_timestamp()
        * 1000)
}

/// The UTC-aligned buckets `[start, end)` covering `[from_ms, to_ms)`: the range is widened to
/// whole buckets, so every bucket means the same whatever range asked for it.
pub fn buckets(by: By, from_ms: i64, to_ms: i64) -> Result<Vec<(i64, i64)>, PnlError> {
    if to_ms <= from_ms {
        return Err(PnlError::EmptyRange);
    }
    if to_ms - from_ms > MAX_RANGE_MS {
        return Err(PnlError::RangeTooLong {
            days: (to_ms - from_ms + DAY_MS - 1) / DAY_MS,
        });
    }
    let fixed = |len: i64| -> Result<Vec<(i64, i64)>, PnlError> {
        let first = from_ms.div_euclid(len) * len;
        let n = usize::try_from((to_ms - first + len - 1) / len).unwrap_or(usize::MAX);
        if n > MAX_BUCKETS {
            return Err(PnlError::TooManyBuckets { n, by });
        }
        Ok((0..n as i64)
            .map(|i| (first + i * len, first + (i + 1) * len))
            .collect())
    };
    match by {
        By::Interval => fixed(INTERVAL_MS),
        By::Day => fixed(DAY_MS),
        By::Month => {
            let mut out = Vec::new();
            let mut start = month_start(from_ms)?;
            while start < to_ms {
                let end = next_month(start)?;
                out.push((start, end));
                start = end;
            }
            Ok(out)
        }
    }
}

/// One power sample of a site, as the P&L reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_ms: i64,
    /// Metered load, kW; `None` when the meter did not answer.
    pub meter_kw: Option<f64>,
    /// The meter's cumulative imported-energy register, kWh.
    pub meter_kwh: Option<f64>,
    /// The miners' summed hashrate, TH/s, as their own telemetry reports it.
    pub miners_ths: f64,
}

/// The Bitcoin market in force from `from_ms` until the next point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MarketPoint {
    pub from_ms: i64,
    pub btc_usd: Decimal,
    pub difficulty: f64,
    pub subsidy_btc: f64,
    pub fees_btc_per_block: f64,
}

impl MarketPoint {
    fn network(&self) -> Network {
        Network {
            difficulty: self.difficulty,
            subsidy_btc: self.subsidy_btc,
            fees_btc_per_block: self.fees_btc_per_block,
            // Only BTC per PH-day is read here; USD values are Decimal from `btc_usd`.
            btc_usd: 0.0,
        }
    }
}

/// Billed usage of a site in a span that starts at `at_ms` (a usage report's bucket, which
/// lies inside one P&L bucket).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub at_ms: i64,
    pub tokens: u64,
    pub revenue_usd: Decimal,
}

/// A DR event of the site, with its terms.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: String,
    pub target_kw: f64,
    pub start_ms: i64,
    /// Its end, or its cancellation if that came first.
    pub end_ms: i64,
    /// Paid per MWh curtailed below the baseline, when the program pays energy.
    pub pay_usd_per_mwh: Option<Decimal>,
    /// The peak (demand) charge the event avoids, per kW of peak load shed.
    pub peak_charge_usd_per_kw: Option<Decimal>,
}

/// One imported electricity price: `usd_per_mwh` over `[start_ms, end_ms)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EnergyPrice {
    pub start_ms: i64,
    pub end_ms: i64,
    pub usd_per_mwh: f64,
}

/// Splits `[t0, t1)` by the imported prices in force (sorted, not overlapping): each piece with
/// its price, or `None` where the tariff applies.
fn priced_pieces(prices: &[EnergyPrice], t0: i64, t1: i64) -> Vec<(i64, i64, Option<f64>)> {
    let mut out = Vec::new();
    let mut at = t0;
    let first = prices.partition_point(|p| p.end_ms <= t0);
    for p in &prices[first..] {
        if at >= t1 || p.start_ms >= t1 {
            break;
        }
        if p.start_ms > at {
            out.push((at, p.start_ms, None));
            at = p.start_ms;
        }
        let end = p.end_ms.min(t1);
        if end > at {
            out.push((at, end, Some(p.usd_per_mwh)));
            at = end;
        }
    }
    if at < t1 {
        out.push((at, t1, None));
    }
    out
}

/// What one site had over the range.
#[derive(Debug, Clone, PartialEq)]
pub struct SiteInput {
    pub site: String,
    /// The fixed tariff: the price of energy no imported price covers.
    pub power_price_usd_per_mwh: Decimal,
    /// Prices imported for the site (its market's series), by start; energy drawn while one
    /// is in force costs its price.
    pub prices: Vec<EnergyPrice>,
    /// Samples in time order, including some before the range's first bucket and after its
    /// last (the readings that span its edges) and before each event's start (its baseline).
    pub samples: Vec<Sample>,
    pub usage: Vec<Usage>,
    pub events: Vec<Event>,
}

/// One bucket's P&L.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Line {
    pub start_ms: i64,
    pub end_ms: i64,
    /// Energy at the meter, kWh.
    pub energy_kwh: f64,
    pub energy_cost_usd: Decimal,
    pub btc_mined: Decimal,
    /// BTC mined at the BTC price in force when it was mined.
    pub mining_revenue_usd: Decimal,
    pub tokens: u64,
    pub inference_revenue_usd: Decimal,
    /// Energy curtailed below the baseline during held, paid DR events, kWh.
    pub curtailed_kwh: f64,
    pub dr_payment_usd: Decimal,
    pub avoided_peak_charge_usd: Decimal,
    /// Mining + inference + DR payment + avoided peak charge − energy cost.
    pub margin_usd: Decimal,
    /// `None` where no energy was booked.
    pub margin_usd_per_mwh: Option<Decimal>,
}

impl Line {
    fn add(&mut self, o: &Line) {
        self.energy_kwh += o.energy_kwh;
        self.energy_cost_usd += o.energy_cost_usd;
        self.btc_mined += o.btc_mined;
        self.mining_revenue_usd += o.mining_revenue_usd;
        self.tokens += o.tokens;
        self.inference_revenue_usd += o.inference_revenue_usd;
        self.curtailed_kwh += o.curtailed_kwh;
        self.dr_payment_usd += o.dr_payment_usd;
        self.avoided_peak_charge_usd += o.avoided_peak_charge_usd;
        self.margin_usd += o.margin_usd;
    }

    /// Margin and margin per MWh from the other lines.
    fn settle(&mut self) {
        self.margin_usd = self.mining_revenue_usd
            + self.inference_revenue_usd
            + self.dr_payment_usd
            + self.avoided_peak_charge_usd
            - self.energy_cost_usd;
        self.margin_usd_per_mwh = per_mwh(self.margin_usd, self.energy_kwh);
    }
}

/// How a site's energy was booked.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Metering {
    /// From the meter's register.
    pub counter_kwh: f64,
    /// From the meter's kW, where the register was missing or went backwards.
    pub integrated_kwh: f64,
    /// Time in the range with no energy booked: no readings, or a gap longer than
    /// [`MAX_GAP_MS`] without the register on both sides.
    pub unmetered_s: f64,
}

/// One site's P&L.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SitePnl {
    pub site: String,
    pub lines: Vec<Line>,
    pub total: Line,
    pub metering: Metering,
    /// What could not be booked and why (no market snapshot, an event not held, ...).
    pub notes: Vec<String>,
}

/// The fleet's P&L: the sum of its sites', bucket by bucket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetPnl {
    pub lines: Vec<Line>,
    pub total: Line,
    pub sites: Vec<SitePnl>,
    pub treasury: Treasury,
}

/// BTC mined over the range, valued when mined and at the latest price.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Treasury {
    pub latest_btc_usd: Option<Decimal>,
    pub sites: Vec<TreasuryRow>,
    pub fleet: TreasuryRow,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TreasuryRow {
    /// The site, or `fleet`.
    pub name: String,
    pub btc_mined: Decimal,
    pub usd_when_mined: Decimal,
    /// `None` without any market snapshot.
    pub usd_at_latest: Option<Decimal>,
}

fn per_mwh(usd: Decimal, kwh: f64) -> Option<Decimal> {
    let mwh = Decimal::from_f64(kwh)?.round_dp(3) / Decimal::ONE_THOUSAND;
    (!mwh.is_zero()).then(|| (usd / mwh).round_dp(2))
}

/// kWh as a Decimal to the Wh (a meter's resolution).
fn kwh_dec(kwh: f64) -> Decimal {
    Decimal::from_f64(kwh).unwrap_or_default().round_dp(3)
}

/// Spreads `amount` (over `[t0, t1)`, evenly in time) into the buckets it overlaps, clipped
/// to the buckets' span; calls `add(bucket index, share)`.
fn spread(buckets: &[(i64, i64)], t0: i64, t1: i64, amount: f64, mut add: impl FnMut(usize, f64)) {
    if t1 <= t0 {
        return;
    }
    let len = (t1 - t0) as f64;
    let first = buckets.partition_point(|b| b.1 <= t0);
    for (i, b) in buckets.iter().enumerate().skip(first) {
        if b.0 >= t1 {
            break;
        }
        let overlap = t1.min(b.1) - t0.max(b.0);
        if overlap > 0 {
            add(i, amount * overlap as f64 / len);
        }
    }
}

/// Milliseconds of `[t0, t1)` inside the buckets' span.
fn covered(buckets: &[(i64, i64)], t0: i64, t1: i64) -> i64 {
    match (buckets.first(), buckets.last()) {
        (Some(f), Some(l)) => (t1.min(l.1) - t0.max(f.0)).max(0),
        _ => 0,
    }
}

/// The market point in force at `ms`.
fn in_force(market: &[MarketPoint], ms: i64) -> Option<usize> {
    market.partition_point(|m| m.from_ms <= ms).checked_sub(1)
}

/// One site's P&L over `buckets` (from [`buckets`]), as of `now_ms` (DR events still open
/// then are not paid yet). `market` is in time order.
pub fn site_pnl(
    input: &SiteInput,
    buckets: &[(i64, i64)],
    market: &[MarketPoint],
    now_ms: i64,
) -> SitePnl {
    let n = buckets.len();
    let mut notes = Vec::new();
    let samples: Vec<Sample> = input
        .samples
        .iter()
        .copied()
        .filter(|s| {
            s.meter_kw.is_none_or(f64::is_finite)
                && s.meter_kwh.is_none_or(f64::is_finite)
                && s.miners_ths.is_finite()
        })
        .collect();
    if samples.len() < input.samples.len() {
        notes.push(format!(
            "{} samples with a number that is not finite were skipped",
            input.samples.len() - samples.len()
        ));
    }

    // --- energy ---
    let mut kwh = vec![0.0; n];
    // Each bucket's energy at the tariff, and the rest's kWh × its imported price (USD/MWh).
    let mut tariff_kwh = vec![0.0; n];
    let mut priced_usd_kwh_per_mwh = vec![0.0; n];
    let mut prices: Vec<EnergyPrice> = input
        .prices
        .iter()
        .copied()
        .filter(|p| p.end_ms > p.start_ms && p.usd_per_mwh.is_finite())
        .collect();
    prices.sort_by_key(|p| p.start_ms);
    // Imports replace what they overlap, so overlaps are a caller's bug: the earlier wins.
    prices.dedup_by(|later, earlier| later.start_ms < earlier.end_ms);
    let mut metering = Metering::default();
    let span_ms = covered(buckets, i64::MIN, i64::MAX);
    let mut booked_ms = 0;
    let metered: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.meter_kw.is_some() || s.meter_kwh.is_some())
        .collect();
    let mut backwards = 0;
    for pair in metered.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let dt = b.at_ms - a.at_ms;
        let energy = match (a.meter_kwh, b.meter_kwh) {
            (Some(x), Some(y)) if y >= x => Some((y - x, true)),
            counter => {
                if matches!(counter, (Some(_), Some(_))) {
                    backwards += 1;
                }
                match (a.meter_kw, b.meter_kw) {
                    (Some(p), Some(q)) if dt <= MAX_GAP_MS => {
                        Some(((p + q) / 2.0 * dt as f64 / 3_600_000.0, false))
                    }
                    _ => None,
                }
            }
        };
        let Some((e, from_counter)) = energy else {
            continue;
        };
        booked_ms += covered(buckets, a.at_ms, b.at_ms);
        let span = (b.at_ms - a.at_ms) as f64;
        for (t0, t1, price) in priced_pieces(&prices, a.at_ms, b.at_ms) {
            let piece = if (t0, t1) == (a.at_ms, b.at_ms) {
                e
            } else {
                e * ((t1 - t0) as f64 / span)
            };
            spread(buckets, t0, t1, piece, |i, share| {
                kwh[i] += share;
                match price {
                    None => tariff_kwh[i] += share,
                    Some(p) => priced_usd_kwh_per_mwh[i] += share * p,
                }
                if from_counter {
                    metering.counter_kwh += share;
                } else {
                    metering.integrated_kwh += share;
                }
            });
        }
    }
    if backwards > 0 {
        notes.push(format!(
            "the meter's register went backwards {backwards} times (a meter replaced or reset); \
             the kW was integrated there instead"
        ));
    }
    metering.unmetered_s = (span_ms - booked_ms).max(0) as f64 / 1e3;
    if metering.unmetered_s > 0.0 {
        notes.push(format!(
            "{:.0} s of the range have no energy booked: no meter readings, or gaps over {} \
             minutes without the register",
            metering.unmetered_s,
            MAX_GAP_MS / 60_000
        ));
    }

    // --- mining: BTC per (bucket, market point) ---
    let mut btc: Vec<Vec<f64>> = vec![vec![0.0; market.len()]; n];
    let mut unpriced_ph_s = 0.0;
    let mut unknown_ms = 0;
    for pair in samples.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let dt = b.at_ms - a.at_ms;
        if dt > MAX_GAP_MS {
            unknown_ms += covered(buckets, a.at_ms, b.at_ms);
            continue;
        }
        // PH/s × s.
        let ph_s = (a.miners_ths + b.miners_ths) / 2.0 / 1000.0 * dt as f64 / 1e3;
        match in_force(market, a.at_ms) {
            Some(m) => {
                let btc_per_ph_s = market[m].network().btc_per_ph_day() / 86_400.0;
                spread(
                    buckets,
                    a.at_ms,
                    b.at_ms,
                    ph_s * btc_per_ph_s,
                    |i, share| {
                        btc[i][m] += share;
                    },
                );
            }
            None => spread(buckets, a.at_ms, b.at_ms, ph_s, |_, share| {
                unpriced_ph_s += share;
            }),
        }
    }
    if unpriced_ph_s > 0.0 {
        notes.push(format!(
            "{:.3} PH/s-days of hashing before the first market snapshot are not booked: set \
             one with `wattmesh market set`",
            unpriced_ph_s / 86_400.0
        ));
    }
    if unknown_ms > 0 {
        notes.push(format!(
            "{:.0} s of the range have no miner telemetry (gaps over {} minutes): no BTC booked \
             there",
            unknown_ms as f64 / 1e3,
            MAX_GAP_MS / 60_000
        ));
    }

    // --- DR: curtailed energy and avoided peak charges of held events ---
    let mut curtailed = vec![0.0; n];
    let mut dr_usd = vec![Decimal::ZERO; n];
    let mut peak_usd = vec![Decimal::ZERO; n];
    let readings: Vec<Metered> = samples
        .iter()
        .filter_map(|s| {
            Some(Metered {
                at_ms: s.at_ms,
                kw: s.meter_kw?,
            })
        })
        .collect();
    for e in &input.events {
        if e.pay_usd_per_mwh.is_none() && e.peak_charge_usd_per_kw.is_none() {
            continue;
        }
        if covered(buckets, e.start_ms, e.end_ms) == 0 && e.end_ms > e.start_ms {
            continue;
        }
        let judged = dr::assess(e.target_kw, e.start_ms, e.end_ms, &readings, now_ms);
        match judged.held {
            None => {
                notes.push(format!("DR event {}: still open, not paid yet", e.id));
                continue;
            }
            Some(false) => {
                notes.push(format!(
                    "DR event {}: target not held, nothing earned",
                    e.id
                ));
                continue;
            }
            Some(true) => {}
        }
        let Some(baseline) = readings.iter().rev().find(|r| r.at_ms < e.start_ms) else {
            notes.push(format!(
                "DR event {}: no meter reading before its start, so no baseline to pay against",
                e.id
            ));
            continue;
        };
        if let Some(pay) = e.pay_usd_per_mwh {
            let mut event_kwh = vec![0.0; n];
            for pair in readings.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                let (t0, t1) = (a.at_ms.max(e.start_ms), b.at_ms.min(e.end_ms));
                if t1 <= t0 || b.at_ms - a.at_ms > MAX_GAP_MS {
                    continue;
                }
                let shed_kw = ((baseline.kw - a.kw).max(0.0) + (baseline.kw - b.kw).max(0.0)) / 2.0;
                let e_kwh = shed_kw * (t1 - t0) as f64 / 3_600_000.0;
                spread(buckets, t0, t1, e_kwh, |i, share| event_kwh[i] += share);
            }
            for (i, k) in event_kwh.iter().enumerate() {
                curtailed[i] += k;
                dr_usd[i] += kwh_dec(*k) * pay / Decimal::ONE_THOUSAND;
            }
        }
        if let (Some(rate), Some(max_kw)) = (e.peak_charge_usd_per_kw, judged.max_kw_after_reached)
        {
            // The coincident peak, if it fell in the event, found the site at or below its
            // highest load after reaching the target: at least this much was avoided.
            let shed = Decimal::from_f64((baseline.kw - max_kw).max(0.0))
                .unwrap_or_default()
                .round_dp(3);
            if let Some(i) = buckets
                .iter()
                .position(|b| b.0 <= e.start_ms && e.start_ms < b.1)
            {
                peak_usd[i] += shed * rate;
            }
        }
    }

    // --- usage ---
    let mut tokens = vec![0u64; n];
    let mut inference = vec![Decimal::ZERO; n];
    for u in &input.usage {
        match buckets.iter().position(|b| b.0 <= u.at_ms && u.at_ms < b.1) {
            Some(i) => {
                tokens[i] += u.tokens;
                inference[i] += u.revenue_usd;
            }
            None => notes.push(format!("usage at unix ms {} is outside the range", u.at_ms)),
        }
    }

    // --- lines ---
    let mut total = Line {
        start_ms: buckets.first().map_or(0, |b| b.0),
        end_ms: buckets.last().map_or(0, |b| b.1),
        ..Line::default()
    };
    let lines: Vec<Line> = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut btc_mined = Decimal::ZERO;
            let mut mining_usd = Decimal::ZERO;
            for (m, amount) in btc[i].iter().enumerate() {
                let coins = Decimal::from_f64(*amount).unwrap_or_default().round_dp(8);
                btc_mined += coins;
                mining_usd += coins * market[m].btc_usd;
            }
            let mut line = Line {
                start_ms: b.0,
                end_ms: b.1,
                energy_kwh: kwh[i],
                energy_cost_usd: ((kwh_dec(tariff_kwh[i]) * input.power_price_usd_per_mwh
                    + Decimal::from_f64(priced_usd_kwh_per_mwh[i]).unwrap_or_default())
                    / Decimal::ONE_THOUSAND)
                    .round_dp(2),
                btc_mined,
                mining_revenue_usd: mining_usd.round_dp(2),
                tokens: tokens[i],
                inference_revenue_usd: inference[i].round_dp(2),
                curtailed_kwh: curtailed[i],
                dr_payment_usd: dr_usd[i].round_dp(2),
                avoided_peak_charge_usd: peak_usd[i].round_dp(2),
                margin_usd: Decimal::ZERO,
                margin_usd_per_mwh: None,
            };
            line.settle();
            total.add(&line);
            line
        })
        .collect();
    total.margin_usd_per_mwh = per_mwh(total.margin_usd, total.energy_kwh);
    SitePnl {
        site: input.site.clone(),
        lines,
        total,
        metering,
        notes,
    }
}

/// The fleet's P&L: each site's, their sum per bucket, and the treasury view.
pub fn fleet_pnl(
    sites: &[SiteInput],
    buckets: &[(i64, i64)],
    market: &[MarketPoint],
    now_ms: i64,
) -> FleetPnl {
    let sites: Vec<SitePnl> = sites
        .iter()
        .map(|s| site_pnl(s, buckets, market, now_ms))
        .collect();
    let mut lines: Vec<Line> = buckets
        .iter()
        .map(|b| Line {
            start_ms: b.0,
            end_ms: b.1,
            ..Line::default()
        })
        .collect();
    let mut total = Line {
        start_ms: buckets.first().map_or(0, |b| b.0),
        end_ms: buckets.last().map_or(0, |b| b.1),
        ..Line::default()
    };
    for s in &sites {
        for (l, sl) in lines.iter_mut().zip(&s.lines) {
            l.add(sl);
        }
        total.add(&s.total);
    }
    for l in &mut lines {
        l.margin_usd_per_mwh = per_mwh(l.margin_usd, l.energy_kwh);
    }
    total.margin_usd_per_mwh = per_mwh(total.margin_usd, total.energy_kwh);
    let latest = market.last().map(|m| m.btc_usd);
    let row = |name: &str, t: &Line| TreasuryRow {
        name: name.to_owned(),
        btc_mined: t.btc_mined,
        usd_when_mined: t.mining_revenue_usd,
        usd_at_latest: latest.map(|p| (t.btc_mined * p).round_dp(2)),
    };
    let treasury = Treasury {
        latest_btc_usd: latest,
        sites: sites.iter().map(|s| row(&s.site, &s.total)).collect(),
        fleet: row("fleet", &total),
    };
    FleetPnl {
        lines,
        total,
        sites,
        treasury,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-03-01T00:00:00Z.
    const T0: i64 = 1_772_323_200_000;
    const MIN: i64 = 60_000;
    const HOUR: i64 = 3_600_000;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    fn market(from_ms: i64, btc_usd: &str) -> MarketPoint {
        MarketPoint {
            from_ms,
            btc_usd: d(btc_usd),
            difficulty: 144.4e12,
            subsidy_btc: 3.125,
            fees_btc_per_block: 0.02,
        }
    }

    fn site(samples: Vec<Sample>) -> SiteInput {
        SiteInput {
            site: "georgia".into(),
            power_price_usd_per_mwh: d("40"),
            prices: vec![],
            samples,
            usage: vec![],
            events: vec![],
        }
    }

    #[test]
    fn energy_costs_its_imported_price_where_one_is_in_force_and_the_tariff_elsewhere() {
        // A flat 1 MW for four hours, sampled every minute; hourly buckets. Imported prices:
        // $100 over the second hour, −$20 over the first half of the third; a corrupt price
        // and an overlapping import are ignored.
        let samples = metered(T0, T0 + 4 * HOUR, MIN, |_| 1_000.0);
        let mut input = site(samples);
        let price = |start_ms, end_ms, usd_per_mwh| EnergyPrice {
            start_ms,
            end_ms,
            usd_per_mwh,
        };
        input.prices = vec![
            price(T0 + 2 * HOUR, T0 + 2 * HOUR + 30 * MIN, -20.0),
            price(T0 + HOUR, T0 + 2 * HOUR, 100.0),
            price(T0 + HOUR + 10 * MIN, T0 + HOUR + 20 * MIN, 9_999.0),
            price(T0 + 3 * HOUR, T0 + 4 * HOUR, f64::NAN),
        ];
        let b = buckets(By::Interval, T0, T0 + 4 * HOUR).unwrap();
        let pnl = site_pnl(&input, &b, &[], T0 + 4 * HOUR);
        let hourly: Vec<Decimal> = pnl
            .lines
            .chunks(4)
            .map(|hour| hour.iter().map(|l| l.energy_cost_usd).sum())
            .collect();
        assert_eq!(hourly, [d("40"), d("100"), d("10"), d("40")]);
        assert_eq!(pnl.total.energy_cost_usd, d("190"));
        assert!(
            close(pnl.total.energy_kwh, 4_000.0, 1e-6),
            "energy is the meter's either way"
        );
    }

    #[test]
    fn a_reading_across_a_price_change_is_split_at_it() {
        let pieces = priced_pieces(
            &[
                EnergyPrice {
                    start_ms: 10,
                    end_ms: 20,
                    usd_per_mwh: 5.0,
                },
                EnergyPrice {
                    start_ms: 25,
                    end_ms: 30,
                    usd_per_mwh: 7.0,
                },
            ],
            0,
            40,
        );
        assert_eq!(
            pieces,
            [
                (0, 10, None),
                (10, 20, Some(5.0)),
                (20, 25, None),
                (25, 30, Some(7.0)),
                (30, 40, None)
            ]
        );
        assert_eq!(priced_pieces(&[], 3, 4), [(3, 4, None)]);
    }

    /// A site drawing `kw(t)` sampled every `every_ms` over `[start, end]`, its register
    /// integrating the true load exactly (rectangles between samples), miners at `ths`.
    fn metered(start: i64, end: i64, every_ms: i64, kw: impl Fn(i64) -> f64) -> Vec<Sample> {
        let mut out = Vec::new();
        let mut register = 1_000.0;
        let mut t = start;
        while t <= end {
            out.push(Sample {
                at_ms: t,
                meter_kw: Some(kw(t)),
                meter_kwh: Some(register),
                miners_ths: 1_000.0,
            });
            register += kw(t) * every_ms as f64 / HOUR as f64;
            t += every_ms;
        }
        out
    }

    #[test]
    fn buckets_align_to_utc_and_refuse_bad_ranges() {
        let day = buckets(By::Day, T0 + 5 * HOUR, T0 + 30 * HOUR).unwrap();
        assert_eq!(day, vec![(T0, T0 + DAY_MS), (T0 + DAY_MS, T0 + 2 * DAY_MS)]);
        let q = buckets(By::Interval, T0 + 7 * MIN, T0 + 31 * MIN).unwrap();
        assert_eq!(q.first().unwrap().0, T0);
        assert_eq!(q.len(), 3);
        // December to February: months of 31, 31 and 28 days.
        let dec = T0 - (31 + 28 + 31) * DAY_MS;
        let months = buckets(By::Month, dec + HOUR, T0 - HOUR).unwrap();
        let lens: Vec<i64> = months.iter().map(|m| (m.1 - m.0) / DAY_MS).collect();
        assert_eq!(lens, [31, 31, 28]);
        for (by, from, to, want) in [
            (By::Day, T0, T0, PnlError::EmptyRange),
            (By::Day, T0, T0 - 1, PnlError::EmptyRange),
            (
                By::Month,
                T0,
                T0 + 400 * DAY_MS,
                PnlError::RangeTooLong { days: 400 },
            ),
            (
                By::Interval,
                T0,
                T0 + 32 * DAY_MS,
                PnlError::TooManyBuckets {
                    n: 32 * 96,
                    by: By::Interval,
                },
            ),
        ] {
            assert_eq!(buckets(by, from, to), Err(want), "{by:?} {from} {to}");
        }
        assert_eq!(By::parse("week"), None);
        assert_eq!(By::parse("month"), Some(By::Month));
    }

    /// The booked energy sums to the register's delta under every bucketing, exactly where
    /// the register is present: through a meter fault (samples with no reading) and a
    /// 40-minute silence, which the register spans.
    #[test]
    fn energy_reconciles_with_the_register_under_any_bucketing() {
        let load = |t: i64| 500.0 + 300.0 * (((t - T0) / MIN) % 7) as f64;
        let mut samples = metered(T0 + 3 * MIN, T0 + 5 * HOUR, 10_000, load);
        // A meter fault: ten minutes of samples without a reading (miners still report).
        for s in samples
            .iter_mut()
            .filter(|s| s.at_ms > T0 + HOUR && s.at_ms < T0 + HOUR + 10 * MIN)
        {
            s.meter_kw = None;
            s.meter_kwh = None;
        }
        // A silence: no samples at all for 40 minutes.
        samples.retain(|s| !(s.at_ms > T0 + 2 * HOUR && s.at_ms < T0 + 2 * HOUR + 40 * MIN));
        let delta = samples.last().unwrap().meter_kwh.unwrap() - samples[0].meter_kwh.unwrap();
        for by in [By::Interval, By::Day, By::Month] {
            let b = buckets(by, T0, T0 + 6 * HOUR).unwrap();
            let pnl = site_pnl(&site(samples.clone()), &b, &[], T0 + DAY_MS);
            let booked: f64 = pnl.lines.iter().map(|l| l.energy_kwh).sum();
            assert!(close(booked, delta, 1e-6), "{by:?}: {booked} vs {delta}");
            assert!(close(pnl.total.energy_kwh, delta, 1e-6));
            assert!(close(pnl.metering.counter_kwh, delta, 1e-6));
            assert_eq!(pnl.metering.integrated_kwh, 0.0);
            // Before the first reading and after the last nothing is known.
            let span = (b.last().unwrap().1 - b[0].0) as f64 / 1e3;
            let unmetered = span - (5 * HOUR - 3 * MIN) as f64 / 1e3;
            assert!(close(pnl.metering.unmetered_s, unmetered, 1e-6), "{by:?}");
        }
    }

    /// Without the register the kW is integrated: within 1% of the true energy for a load
    /// that changes between samples; a gap beyond the bound is left unbooked and said so.
    #[test]
    fn without_the_register_the_kw_is_integrated_within_one_percent() {
        let load = |t: i64| 800.0 + 200.0 * ((t - T0) as f64 / HOUR as f64).sin();
        let mut samples = metered(T0, T0 + 4 * HOUR, 5_000, load);
        let truth = samples.last().unwrap().meter_kwh.unwrap() - samples[0].meter_kwh.unwrap();
        for s in &mut samples {
            s.meter_kwh = None;
        }
        let b = buckets(By::Interval, T0, T0 + 4 * HOUR).unwrap();
        let pnl = site_pnl(&site(samples.clone()), &b, &[], T0 + DAY_MS);
        assert!(
            (pnl.total.energy_kwh - truth).abs() / truth < 0.01,
            "{} vs {truth}",
            pnl.total.energy_kwh
        );
        assert_eq!(pnl.metering.counter_kwh, 0.0);
        // A 20-minute silence without the register: unbooked, reported.
        samples.retain(|s| !(s.at_ms > T0 + HOUR && s.at_ms < T0 + HOUR + 20 * MIN));
        let pnl = site_pnl(&site(samples), &b, &[], T0 + DAY_MS);
        assert!(close(pnl.metering.unmetered_s, 20.0 * 60.0, 5.0 + 1e-6));
        assert!(pnl.notes.iter().any(|n| n.contains("no energy booked")));
    }

    #[test]
    fn a_register_that_goes_backwards_is_integrated_not_booked_negative() {
        let mut samples = metered(T0, T0 + HOUR, 60_000, |_| 600.0);
        for s in samples.iter_mut().filter(|s| s.at_ms >= T0 + 30 * MIN) {
            s.meter_kwh = s.meter_kwh.map(|k| k - 900.0);
        }
        let b = buckets(By::Day, T0, T0 + HOUR).unwrap();
        let pnl = site_pnl(&site(samples), &b, &[], T0 + DAY_MS);
        assert!(close(pnl.total.energy_kwh, 600.0, 1e-6));
        assert!(close(pnl.metering.integrated_kwh, 10.0, 1e-6));
        assert!(pnl.notes.iter().any(|n| n.contains("backwards")));
    }

    /// 1 PH/s for a day earns the network's BTC per PH-day, valued at the price in force;
    /// a new market snapshot at noon values the afternoon at its price.
    #[test]
    fn btc_mined_and_its_value_at_the_time() {
        let samples = metered(T0, T0 + DAY_MS, 60_000, |_| 3_500.0);
        let per_day = market(0, "1").network().btc_per_ph_day();
        let cases = [
            (vec![market(0, "68500")], d("68500"), d("68500")),
            (
                vec![market(0, "68500"), market(T0 + 12 * HOUR, "70000")],
                d("68500"),
                d("70000"),
            ),
        ];
        for (m, morning, afternoon) in cases {
            let b = buckets(By::Day, T0, T0 + DAY_MS).unwrap();
            let pnl = site_pnl(&site(samples.clone()), &b, &m, T0 + DAY_MS);
            let want_btc = Decimal::from_f64(per_day).unwrap().round_dp(8);
            assert!((pnl.total.btc_mined - want_btc).abs() <= d("0.00000002"));
            let half = Decimal::from_f64(per_day / 2.0).unwrap();
            let want_usd = (half * morning + half * afternoon).round_dp(2);
            assert!(
                (pnl.total.mining_revenue_usd - want_usd).abs() <= d("0.01"),
                "{} vs {want_usd}",
                pnl.total.mining_revenue_usd
            );
            // 84 MWh at $40.
            assert_eq!(pnl.total.energy_cost_usd, d("3360.00"));
        }
        // No snapshot: nothing booked, and said so.
        let b = buckets(By::Day, T0, T0 + DAY_MS).unwrap();
        let pnl = site_pnl(&site(samples), &b, &[], T0 + DAY_MS);
        assert_eq!(pnl.total.btc_mined, Decimal::ZERO);
        assert!(pnl.notes.iter().any(|n| n.contains("market snapshot")));
    }

    /// A held event pays (baseline − metered) × hours × rate; its peak tariff books the load
    /// shed below the baseline; an event not held or still open earns nothing.
    #[test]
    fn dr_income_and_avoided_peak_charges() {
        let start = T0 + 2 * HOUR;
        let load = move |t: i64| {
            if (start..=start + HOUR).contains(&t) {
                200.0
            } else {
                1_000.0
            }
        };
        let samples = metered(T0, T0 + 4 * HOUR, 60_000, load);
        let event = |target_kw: f64| Event {
            id: "dr-1".into(),
            target_kw,
            start_ms: start,
            end_ms: start + HOUR,
            pay_usd_per_mwh: Some(d("100")),
            peak_charge_usd_per_kw: Some(d("10")),
        };
        let b = buckets(By::Interval, T0, T0 + 4 * HOUR).unwrap();
        for (target, now, want_kwh, want_pay, want_peak, note) in [
            (250.0, T0 + DAY_MS, 800.0, "80.00", "8000.00", None),
            (150.0, T0 + DAY_MS, 0.0, "0", "0", Some("not held")),
            (250.0, start + 10 * MIN, 0.0, "0", "0", Some("still open")),
        ] {
            let mut input = site(samples.clone());
            input.events = vec![event(target)];
            let pnl = site_pnl(&input, &b, &[], now);
            // The load is 200 kW from the first sample of the event to the one at its end.
            assert!(
                close(pnl.total.curtailed_kwh, want_kwh, 1e-6),
                "{target}: {}",
                pnl.total.curtailed_kwh
            );
            assert_eq!(pnl.total.dr_payment_usd, d(want_pay), "{target}");
            assert_eq!(pnl.total.avoided_peak_charge_usd, d(want_peak), "{target}");
            if let Some(n) = note {
                assert!(pnl.notes.iter().any(|x| x.contains(n)), "{:?}", pnl.notes);
            }
        }
    }

    /// Usage lands in its bucket; margin = revenues − energy cost; the fleet is the sum of its
    /// sites, line by line, and the treasury values BTC at the latest price too.
    #[test]
    fn margins_and_the_fleet_add_up() {
        let m = [market(0, "60000"), market(T0 + HOUR, "70000")];
        let b = buckets(By::Interval, T0, T0 + 2 * HOUR).unwrap();
        let mut a = site(metered(T0, T0 + 2 * HOUR, 30_000, |_| 1_000.0));
        a.usage = vec![Usage {
            at_ms: T0 + 20 * MIN,
            tokens: 1_000_000,
            revenue_usd: d("0.50"),
        }];
        let mut c = site(metered(T0, T0 + 2 * HOUR, 30_000, |_| 400.0));
        c.site = "texas".into();
        c.power_price_usd_per_mwh = d("25");
        let fleet = fleet_pnl(&[a, c], &b, &m, T0 + DAY_MS);
        let georgia = &fleet.sites[0];
        assert_eq!(georgia.lines[1].tokens, 1_000_000);
        assert_eq!(georgia.lines[1].inference_revenue_usd, d("0.50"));
        // 250 kWh a quarter hour at $40/MWh: $10.
        assert_eq!(georgia.lines[0].energy_cost_usd, d("10.00"));
        for l in &georgia.lines {
            assert_eq!(
                l.margin_usd,
                l.mining_revenue_usd + l.inference_revenue_usd - l.energy_cost_usd
            );
        }
        for (i, l) in fleet.lines.iter().enumerate() {
            let (g, t) = (&fleet.sites[0].lines[i], &fleet.sites[1].lines[i]);
            assert_eq!(l.margin_usd, g.margin_usd + t.margin_usd);
            assert_eq!(l.btc_mined, g.btc_mined + t.btc_mined);
            assert!(close(l.energy_kwh, g.energy_kwh + t.energy_kwh, 1e-9));
        }
        assert_eq!(
            fleet.total.margin_usd,
            fleet.lines.iter().map(|l| l.margin_usd).sum::<Decimal>()
        );
        let per_mwh = fleet.total.margin_usd / d("2.8");
        assert_eq!(fleet.total.margin_usd_per_mwh, Some(per_mwh.round_dp(2)));
        let t = &fleet.treasury;
        assert_eq!(t.latest_btc_usd, Some(d("70000")));
        assert_eq!(t.fleet.btc_mined, fleet.total.btc_mined);
        assert_eq!(
            t.fleet.usd_at_latest,
            Some((fleet.total.btc_mined * d("70000")).round_dp(2))
        );
        assert!(t.fleet.usd_when_mined < t.fleet.usd_at_latest.unwrap());
        assert_eq!(t.sites.len(), 2);
    }
}
