//! Inference demand as the gateways see it: the tokens a region's sites served over a recent
//! window (from the usage events) and what they were billed (the price book), turned into the
//! demand and the prices a site's plan works with — in place of its power model's forecast.
//!
//! A region's demand is shared among its sites by GPU capacity (the planner routes nothing
//! itself; the gateways spread a model's traffic over its replicas). The model's hourly profile
//! keeps its shape, scaled so the hour at hand is what was measured: a measurement at 3 a.m.
//! still expects the afternoon's peak. Revenue per token is what the usage was rated at; a
//! class with no tokens in the window keeps the model's price.

use super::model::{DemandSpec, InferencePrices, SiteSpec};

/// One region's served usage over a window.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RegionUsage {
    pub window_s: f64,
    /// Prompt + completion tokens of interactive requests (every class but batch).
    pub interactive_tokens: u64,
    pub interactive_revenue_usd: f64,
    pub batch_tokens: u64,
    pub batch_revenue_usd: f64,
}

impl RegionUsage {
    /// Whether the gateways reported anything for the region in the window.
    pub fn is_empty(&self) -> bool {
        self.interactive_tokens == 0 && self.batch_tokens == 0
    }
}

/// A site's part of its region's usage: `share` of it, in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObservedDemand {
    pub region: RegionUsage,
    pub share: f64,
}

/// The site's GPU capacity, tokens a second at full load: its share of a region is this over
/// the sum of its region's sites'.
pub fn gpu_capacity_tokens_per_s(spec: &SiteSpec) -> f64 {
    spec.gpu_groups
        .iter()
        .map(|g| f64::from(g.nodes) * g.tokens_per_s)
        .filter(|c| c.is_finite() && *c > 0.0)
        .sum()
}

impl ObservedDemand {
    /// Replaces `spec`'s demand and inference prices with what was observed, at local hour
    /// `hour` (0–23). A region with no usage at all in the window leaves the forecast alone
    /// (a fleet just started, or usage not shipped yet): the plan never starves inference on
    /// a silence it cannot tell from an outage. Returns whether the observation was used.
    pub fn apply(&self, spec: &mut SiteSpec, hour: usize) -> bool {
        let r = &self.region;
        let window_ok = r.window_s.is_finite() && r.window_s > 0.0;
        if r.is_empty() || !window_ok || !(0.0..=1.0).contains(&self.share) {
            return false;
        }
        let rate = |tokens: u64| tokens as f64 * self.share / r.window_s;
        let profile = spec.demand.hourly_profile.clone();
        let now_multiplier = profile
            .as_ref()
            .and_then(|p| p.get(hour).copied())
            .unwrap_or(1.0);
        // A profile that is zero now cannot be scaled to what was measured: flat instead.
        let (interactive_tokens_per_s, hourly_profile) = if now_multiplier > 0.0 {
            (rate(r.interactive_tokens) / now_multiplier, profile)
        } else {
            (rate(r.interactive_tokens), None)
        };
        let per_mtok = |revenue: f64, tokens: u64, model: f64| {
            if tokens == 0 {
                model
            } else {
                revenue / tokens as f64 * 1e6
            }
        };
        spec.inference = InferencePrices {
            interactive_usd_per_mtok: per_mtok(
                r.interactive_revenue_usd,
                r.interactive_tokens,
                spec.inference.interactive_usd_per_mtok,
            ),
            batch_usd_per_mtok: per_mtok(
                r.batch_revenue_usd,
                r.batch_tokens,
                spec.inference.batch_usd_per_mtok,
            ),
        };
        spec.demand = DemandSpec {
            interactive_tokens_per_s,
            batch_tokens_per_s: rate(r.batch_tokens),
            hourly_profile,
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::planner::model::GpuGroupSpec;

    fn spec() -> SiteSpec {
        let mut s: SiteSpec = toml::from_str(
            "name = \"s\"\ninterconnect_kw = 1000.0\n\
             [inference]\ninteractive_usd_per_mtok = 0.5\nbatch_usd_per_mtok = 0.25\n\
             [demand]\ninteractive_tokens_per_s = 999.0\nbatch_tokens_per_s = 999.0\n",
        )
        .unwrap();
        s.gpu_groups = vec![GpuGroupSpec {
            name: "h100".into(),
            nodes: 4,
            idle_kw: 1.0,
            max_kw: 10.0,
            tokens_per_s: 2_500.0,
        }];
        s
    }

    fn usage() -> RegionUsage {
        RegionUsage {
            window_s: 3_600.0,
            interactive_tokens: 36_000_000,
            interactive_revenue_usd: 72.0,
            batch_tokens: 0,
            batch_revenue_usd: 0.0,
        }
    }

    #[test]
    fn a_sites_share_of_its_regions_tokens_and_their_billed_price_replace_the_forecast() {
        let mut s = spec();
        assert_eq!(gpu_capacity_tokens_per_s(&s), 10_000.0);
        let observed = ObservedDemand {
            region: usage(),
            share: 0.25,
        };
        assert!(observed.apply(&mut s, 10));
        assert_eq!(s.demand.interactive_tokens_per_s, 2_500.0);
        assert_eq!(s.demand.batch_tokens_per_s, 0.0);
        assert_eq!(s.inference.interactive_usd_per_mtok, 2.0);
        assert_eq!(
            s.inference.batch_usd_per_mtok, 0.25,
            "no batch tokens: the model's price"
        );
    }

    #[test]
    fn the_profile_keeps_its_shape_scaled_to_the_hour_measured() {
        let mut s = spec();
        let mut profile = vec![1.0; 24];
        profile[3] = 0.5;
        profile[15] = 2.0;
        s.demand.hourly_profile = Some(profile.clone());
        let observed = ObservedDemand {
            region: usage(),
            share: 1.0,
        };
        assert!(observed.apply(&mut s, 3));
        // 10,000 tokens/s at 3 a.m., half the base: the base is 20,000, the afternoon 40,000.
        assert_eq!(s.demand.interactive_tokens_per_s, 20_000.0);
        assert_eq!(s.demand.hourly_profile, Some(profile.clone()));
        profile[3] = 0.0;
        s.demand.hourly_profile = Some(profile);
        assert!(observed.apply(&mut s, 3));
        assert_eq!(s.demand.interactive_tokens_per_s, 10_000.0);
        assert_eq!(
            s.demand.hourly_profile, None,
            "a zero hour cannot be scaled: flat"
        );
    }

    #[test]
    fn silence_or_a_broken_observation_leaves_the_forecast() {
        for observed in [
            ObservedDemand {
                region: RegionUsage {
                    window_s: 3_600.0,
                    ..RegionUsage::default()
                },
                share: 1.0,
            },
            ObservedDemand {
                region: RegionUsage {
                    window_s: 0.0,
                    ..usage()
                },
                share: 1.0,
            },
            ObservedDemand {
                region: usage(),
                share: f64::NAN,
            },
            ObservedDemand {
                region: usage(),
                share: 1.5,
            },
        ] {
            let mut s = spec();
            assert!(!observed.apply(&mut s, 0), "{observed:?}");
            assert_eq!(s, spec());
        }
    }
}
