//! Demand response, decided: the load target of an event from what the operator asked, its
//! window, whether a site must shed inference as well as mining to meet it, and how an event
//! went, judged from the meter.
//!
//! Shedding order (the issue's, and what grid programs pay for): mining first — every miner
//! of the site sleeps for the whole event, since a sleeping ASIC loses only that hour's
//! hashprice — then inference, whose revenue per MWh is far higher: batch work waits and
//! interactive traffic moves to other regions. Inference is shed only when the site's load
//! other than its miners is above the target on its own.

/// Longest event: a day.
pub const MAX_DURATION_MINUTES: u32 = 1_440;
/// A start this far in the past is taken as "now" (clocks and typing); further back is refused.
pub const START_SLACK_MS: i64 = 60_000;
/// A sample within this fraction above the target still counts as at the target: meters
/// are accurate to about 0.5% (class 0.5S), and a target is not missed by its own error.
pub const METER_TOLERANCE: f64 = 0.01;

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ask {
    /// Stay at or below this load, kW.
    DownToKw(f64),
    /// Shed this percent of the site's load now.
    ReduceByPct(f64),
}

/// Why an event cannot be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DrError {
    #[error("down_to_kw must be a finite number of kW, zero or more (got {0})")]
    BadTarget(f64),
    #[error("reduce_by_pct must be more than 0 and at most 100 (got {0})")]
    BadPercent(f64),
    #[error(
        "reduce_by_pct needs the site's metered load, and its agent has not reported a meter \
         reading yet; give down_to_kw instead"
    )]
    NoBaseline,
    #[error("duration_minutes must be 1 to {MAX_DURATION_MINUTES} (got {0})")]
    BadDuration(u32),
    #[error("the event would start {0} s in the past; a DR event starts now or later")]
    InThePast(i64),
}

/// The target in kW: `down_to_kw` as given, or the baseline less the percent.
pub fn target_kw(ask: Ask, baseline_kw: Option<f64>) -> Result<f64, DrError> {
    match ask {
        Ask::DownToKw(kw) if kw.is_finite() && kw >= 0.0 => Ok(kw),
        Ask::DownToKw(kw) => Err(DrError::BadTarget(kw)),
        Ask::ReduceByPct(pct) if !(pct > 0.0 && pct <= 100.0) => Err(DrError::BadPercent(pct)),
        Ask::ReduceByPct(pct) => {
            let base = baseline_kw
                .filter(|b| b.is_finite() && *b >= 0.0)
                .ok_or(DrError::NoBaseline)?;
            Ok(base * (1.0 - pct / 100.0))
        }
    }
}

/// The event's `[start, end)` in unix ms: `start_ms` (or now; a start up to
/// [`START_SLACK_MS`] ago counts as now) for `duration_minutes`.
pub fn window(
    start_ms: Option<i64>,
    now_ms: i64,
    duration_minutes: u32,
) -> Result<(i64, i64), DrError> {
    if duration_minutes == 0 || duration_minutes > MAX_DURATION_MINUTES {
        return Err(DrError::BadDuration(duration_minutes));
    }
    let start = match start_ms {
        None => now_ms,
        Some(s) if s < now_ms - START_SLACK_MS => {
            return Err(DrError::InThePast((now_ms - s) / 1_000));
        }
        Some(s) => s.max(now_ms),
    };
    Ok((start, start + i64::from(duration_minutes) * 60_000))
}

/// Whether two `[start, end)` windows share any time.
pub fn overlaps(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Whether the site must shed inference too: its metered load less what its miners draw is
/// above the target. The miners' cooling share stays in the rest, so this leans towards
/// shedding; with no meter reading nothing is known, and inference is shed to be safe.
pub fn sheds_inference(target_kw: f64, meter_kw: Option<f64>, miners_kw: f64) -> bool {
    match meter_kw {
        Some(meter) => meter - miners_kw.max(0.0) > target_kw,
        None => true,
    }
}

/// One metered sample: unix ms and kW.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Metered {
    pub at_ms: i64,
    pub kw: f64,
}

/// How an event went.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The first sample at or below the target, at or after the start.
    pub reached_at_ms: Option<i64>,
    /// Whether every sample from then to the end stayed there; `None` until the event is over
    /// (by its end or its cancellation).
    pub held: Option<bool>,
    pub max_kw_after_reached: Option<f64>,
}

/// Judges an event over `[start_ms, end_ms)` from its meter samples (in time order), as of
/// `now_ms`. An event over without the target ever reached was not held.
pub fn assess(
    target_kw: f64,
    start_ms: i64,
    end_ms: i64,
    samples: &[Metered],
    now_ms: i64,
) -> Assessment {
    let ceiling = target_kw * (1.0 + METER_TOLERANCE);
    let during = samples
        .iter()
        .filter(|s| s.at_ms >= start_ms && s.at_ms < end_ms);
    let mut reached_at_ms = None;
    let mut max_after: Option<f64> = None;
    for s in during {
        if reached_at_ms.is_none() && s.kw <= ceiling {
            reached_at_ms = Some(s.at_ms);
        }
        if reached_at_ms.is_some() {
            max_after = Some(max_after.map_or(s.kw, |m| m.max(s.kw)));
        }
    }
    let over = now_ms >= end_ms;
    let held = over.then(|| reached_at_ms.is_some() && max_after.is_some_and(|m| m <= ceiling));
    Assessment {
        reached_at_ms,
        held,
        max_kw_after_reached: max_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(target_kw(Ask::DownToKw(100.0), None), Ok(100.0));
        assert_eq!(target_kw(Ask::DownToKw(0.0), None), Ok(0.0));
        assert_eq!(target_kw(Ask::ReduceByPct(25.0), Some(400.0)), Ok(300.0));
        assert_eq!(target_kw(Ask::ReduceByPct(100.0), Some(400.0)), Ok(0.0));
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                target_kw(Ask::DownToKw(bad), None),
                Err(DrError::BadTarget(_))
            ));
        }
        for bad in [0.0, -5.0, 100.1, f64::NAN] {
            assert!(matches!(
                target_kw(Ask::ReduceByPct(bad), Some(1.0)),
                Err(DrError::BadPercent(_))
            ));
        }
        assert_eq!(
            target_kw(Ask::ReduceByPct(10.0), None),
            Err(DrError::NoBaseline)
        );
        assert_eq!(
            target_kw(Ask::ReduceByPct(10.0), Some(f64::NAN)),
            Err(DrError::NoBaseline)
        );
    }

    #[test]
    fn windows() {
        let now = 1_000_000_000;
        assert_eq!(window(None, now, 30), Ok((now, now + 1_800_000)));
        assert_eq!(
            window(Some(now + 5_000), now, 1),
            Ok((now + 5_000, now + 65_000))
        );
        // A start a few seconds ago is now; further back is refused.
        assert_eq!(window(Some(now - 30_000), now, 1), Ok((now, now + 60_000)));
        assert_eq!(
            window(Some(now - 120_000), now, 1),
            Err(DrError::InThePast(120))
        );
        assert_eq!(window(None, now, 0), Err(DrError::BadDuration(0)));
        assert_eq!(window(None, now, 1_441), Err(DrError::BadDuration(1_441)));
    }

    #[test]
    fn overlap_is_half_open() {
        assert!(overlaps((0, 10), (5, 15)));
        assert!(overlaps((0, 10), (2, 3)));
        assert!(!overlaps((0, 10), (10, 20)));
        assert!(!overlaps((10, 20), (0, 10)));
    }

    #[test]
    fn inference_is_shed_only_when_the_rest_is_above_the_target() {
        // 400 kW metered, 380 of it miners: 20 kW left.
        assert!(!sheds_inference(50.0, Some(400.0), 380.0));
        assert!(sheds_inference(10.0, Some(400.0), 380.0));
        assert!(sheds_inference(10.0, None, 380.0));
    }

    fn m(at_ms: i64, kw: f64) -> Metered {
        Metered { at_ms, kw }
    }

    #[test]
    fn assessment() {
        let samples = [
            m(-2_000, 400.0),
            m(0, 400.0),
            m(4_000, 150.0),
            m(8_000, 9.0),
            m(12_000, 10.05),
            m(16_000, 8.0),
        ];
        // Running: reached at 8 s, not judged yet.
        let a = assess(10.0, 0, 20_000, &samples, 17_000);
        assert_eq!(a.reached_at_ms, Some(8_000));
        assert_eq!(a.held, None);
        assert_eq!(a.max_kw_after_reached, Some(10.05));
        // Over: 10.05 is within the meter's tolerance of 10.
        assert_eq!(assess(10.0, 0, 20_000, &samples, 20_000).held, Some(true));
        // A tighter target was reached but not held.
        let a = assess(9.0, 0, 20_000, &samples, 20_000);
        assert_eq!(a.reached_at_ms, Some(8_000));
        assert_eq!(a.held, Some(false));
        // Never reached: not held.
        let a = assess(1.0, 0, 20_000, &samples, 30_000);
        assert_eq!(a.reached_at_ms, None);
        assert_eq!(a.held, Some(false));
        // Samples before the start do not count.
        assert_eq!(assess(500.0, 0, 20_000, &samples, 0).reached_at_ms, Some(0));
    }
}
