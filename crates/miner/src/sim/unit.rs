//! One simulated miner's physics, as a pure function of simulated time: no clock, no I/O, so
//! it is tested with plain numbers and the server just passes "now" in.
//!
//! The unit is either *awake* (wants to hash at its profile's power) or *asleep* (LuxOS
//! `curtail sleep`). Each command starts a new segment from the power drawn at that moment;
//! within a segment the draw is a closed form of the time since it started:
//!
//! - asleep: hashing stops at once (the firmware stops sending work), the draw falls linearly
//!   to `sleep_w` over `ramp_down_s` (PSU and fans winding down) — `RampingDown`, then `Asleep`;
//! - awake: the draw rises at `(nominal_w − sleep_w) / ramp_up_s` W/s up to the profile's
//!   power, capped by [`AsicModel::max_w_at`] the ambient temperature — `RampingUp`, then
//!   `Hashing`. The hashboards hash once the draw reaches the lowest profile (`min_w`, where
//!   [`AsicModel::hashrate_ths`] starts): before that the unit is powering up and hashes
//!   nothing. A profile lowered while hashing takes effect at once (clocks drop in a moment).
//! - above the shutdown temperature the firmware turns the boards off (`Overheated`: sleep
//!   draw, no hashrate) until the ambient falls back.
//!
//! The hashrate reported for any window (5 s, 1 m, …) is the instantaneous one: averaging
//! windows would add state and change nothing a controller decides on. The average since boot
//! is exact (the hashrate integrated over every segment).

use wattmesh_domain::mining::AsicModel;

/// Profile steps below the default one; the lowest reaches `min_w`.
const STEPS_DOWN: i32 = 16;
/// Rise of the chip temperature over ambient at nominal power, °C (an assumption).
const CHIP_RISE_C: f64 = 30.0;
/// Intervals of the Simpson integration of a ramp's hashrate.
const SIMPSON_INTERVALS: usize = 64;

/// What the unit is doing, as an operator would say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    Hashing,
    RampingDown,
    Asleep,
    RampingUp,
    /// Shut down by the firmware: the ambient is above the model's shutdown temperature.
    Overheated,
}

/// A built-in power profile, as LuxOS lists them: `default` at nominal power, then steps of
/// `(nominal_w − min_w) / 16` named `-1` … `-16` below it and `+1` … above it up to `max_w`.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub watts: f64,
}

/// `x > 0`, and false for NaN (so a NaN ramp or step is treated as none).
fn positive(x: f64) -> bool {
    x > 0.0
}

/// The profiles of `model`, lowest power first.
pub fn profiles(model: &AsicModel) -> Vec<Profile> {
    let step = (model.nominal_w - model.min_w) / f64::from(STEPS_DOWN);
    if !positive(step) {
        return vec![Profile {
            name: "default".into(),
            watts: model.nominal_w,
        }];
    }
    let steps_up = ((model.max_w - model.nominal_w) / step + 1e-9)
        .floor()
        .max(0.0) as i32;
    (-STEPS_DOWN..=steps_up)
        .map(|k| Profile {
            name: if k == 0 {
                "default".into()
            } else {
                format!("{k:+}")
            },
            watts: model.nominal_w + f64::from(k) * step,
        })
        .collect()
}

/// One unit's physical state.
#[derive(Debug, Clone)]
pub struct Unit {
    model: AsicModel,
    profiles: Vec<Profile>,
    profile: usize,
    ambient_c: f64,
    awake: bool,
    /// The current segment: when it started (sim seconds) and the draw then.
    since_s: f64,
    from_w: f64,
    /// Terahashes done before the current segment.
    th_before: f64,
    booted_s: f64,
}

impl Unit {
    /// A unit booted at `now_s`, already settled: hashing at `profile`'s power, or asleep.
    /// `None` if the model has no profile of that name.
    pub fn new(
        model: AsicModel,
        profile: &str,
        ambient_c: f64,
        awake: bool,
        now_s: f64,
    ) -> Option<Unit> {
        let profiles = profiles(&model);
        let index = profiles.iter().position(|p| p.name == profile)?;
        let mut unit = Unit {
            model,
            profiles,
            profile: index,
            ambient_c,
            awake,
            since_s: now_s,
            from_w: model.sleep_w,
            th_before: 0.0,
            booted_s: now_s,
        };
        if awake {
            unit.from_w = unit.target_w().unwrap_or(model.sleep_w);
        }
        Some(unit)
    }

    pub fn model(&self) -> &AsicModel {
        &self.model
    }

    pub fn profiles(&self) -> &[Profile] {
        &self.profiles
    }

    pub fn profile(&self) -> &Profile {
        // `profile` always indexes `profiles` (set from a position in it).
        &self.profiles[self.profile]
    }

    pub fn ambient_c(&self) -> f64 {
        self.ambient_c
    }

    /// The power the unit settles at while awake: its profile, derated by heat; `None` when
    /// the heat shut it down.
    fn target_w(&self) -> Option<f64> {
        let cap = self.model.max_w_at(self.ambient_c)?;
        Some(self.profile().watts.min(cap))
    }

    /// The draw at `now_s`, W.
    pub fn watts(&self, now_s: f64) -> f64 {
        let dt = (now_s - self.since_s).max(0.0);
        let sleep_w = self.model.sleep_w;
        if !self.awake {
            let ramp = self.model.ramp_down_s;
            if self.from_w <= sleep_w || !positive(ramp) || dt >= ramp {
                return sleep_w;
            }
            return self.from_w - (self.from_w - sleep_w) * dt / ramp;
        }
        let Some(target) = self.target_w() else {
            return sleep_w;
        };
        let rate = (self.model.nominal_w - sleep_w) / self.model.ramp_up_s;
        if self.from_w >= target || !(rate.is_finite() && rate > 0.0) {
            return target;
        }
        (self.from_w + rate * dt).min(target)
    }

    /// The hashrate at `now_s`, TH/s.
    pub fn ths(&self, now_s: f64) -> f64 {
        if self.awake {
            self.model.hashrate_ths(self.watts(now_s))
        } else {
            0.0
        }
    }

    /// The phase at `now_s`.
    pub fn phase(&self, now_s: f64) -> Phase {
        let watts = self.watts(now_s);
        if !self.awake {
            return if watts > self.model.sleep_w {
                Phase::RampingDown
            } else {
                Phase::Asleep
            };
        }
        match self.target_w() {
            None => Phase::Overheated,
            Some(target) if watts < target => Phase::RampingUp,
            Some(_) => Phase::Hashing,
        }
    }

    /// Seconds since boot.
    pub fn elapsed_s(&self, now_s: f64) -> f64 {
        (now_s - self.booted_s).max(0.0)
    }

    /// Terahashes done since boot.
    pub fn total_th(&self, now_s: f64) -> f64 {
        self.th_before + self.th_between(self.since_s, now_s)
    }

    /// Chip temperature, °C: ambient plus a rise proportional to the draw.
    pub fn chip_c(&self, now_s: f64) -> f64 {
        self.ambient_c + CHIP_RISE_C * self.watts(now_s) / self.model.nominal_w
    }

    /// `curtail sleep`. Asleep already: nothing changes (the ramp is not restarted).
    pub fn sleep(&mut self, now_s: f64) {
        if self.awake {
            self.rebase(now_s);
            self.awake = false;
        }
    }

    /// `curtail wakeup`, or the unit waking by itself. Awake already: nothing changes.
    pub fn wakeup(&mut self, now_s: f64) {
        if !self.awake {
            self.rebase(now_s);
            self.awake = true;
        }
    }

    /// `profileset`: `false` if there is no such profile.
    pub fn set_profile(&mut self, now_s: f64, name: &str) -> bool {
        let Some(index) = self.profiles.iter().position(|p| p.name == name) else {
            return false;
        };
        self.rebase(now_s);
        self.profile = index;
        true
    }

    /// A change of the ambient temperature (a test's knob; the weather's, on a real site).
    pub fn set_ambient(&mut self, now_s: f64, ambient_c: f64) {
        self.rebase(now_s);
        self.ambient_c = ambient_c;
    }

    /// Starts a new segment at `now_s` from the draw and the hashes done until then.
    fn rebase(&mut self, now_s: f64) {
        let now_s = now_s.max(self.since_s);
        self.th_before = self.total_th(now_s);
        self.from_w = self.watts(now_s);
        self.since_s = now_s;
    }

    /// Terahashes done in `[a, b]` of the current segment (Simpson's rule: exact where the
    /// hashrate is flat, and the ramps are smooth).
    fn th_between(&self, a: f64, b: f64) -> f64 {
        if !positive(b - a) {
            return 0.0;
        }
        let n = SIMPSON_INTERVALS;
        let h = (b - a) / n as f64;
        let sum: f64 = (0..=n)
            .map(|i| {
                let weight = if i == 0 || i == n {
                    1.0
                } else if i % 2 == 1 {
                    4.0
                } else {
                    2.0
                };
                weight * self.ths(a + h * i as f64)
            })
            .sum();
        sum * h / 3.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattmesh_domain::mining::asic_model;

    fn s19() -> AsicModel {
        *asic_model("Antminer S19 XP").unwrap()
    }

    #[test]
    fn profiles_step_from_min_to_max_with_default_at_nominal() {
        let m = s19();
        let p = profiles(&m);
        assert_eq!(p.first().unwrap().watts, m.min_w);
        assert!(p.last().unwrap().watts <= m.max_w);
        let default = p.iter().find(|p| p.name == "default").unwrap();
        assert_eq!(default.watts, m.nominal_w);
        assert!(p.iter().any(|p| p.name == "-16") && p.iter().any(|p| p.name == "+4"));
        assert!(p.windows(2).all(|w| w[0].watts < w[1].watts));
    }

    /// The state machine, checked in time order: `sleep` at t=100, `wakeup` at t=200, then
    /// (time, phase, watts, hashing?) at each point. A segment answers for times after its start.
    #[test]
    fn sleep_then_wake_follows_the_ramps() {
        let m = s19();
        let mut u = Unit::new(m, "default", 25.0, true, 0.0).unwrap();
        let rate = (m.nominal_w - m.sleep_w) / m.ramp_up_s;
        let boards_on = 200.0 + (m.min_w - m.sleep_w) / rate;
        let half_down = 100.0 + m.ramp_down_s / 2.0;
        let cases = [
            (50.0, Phase::Hashing, m.nominal_w, true),
            (
                half_down,
                Phase::RampingDown,
                (m.nominal_w + m.sleep_w) / 2.0,
                false,
            ),
            (100.0 + m.ramp_down_s, Phase::Asleep, m.sleep_w, false),
            (150.0, Phase::Asleep, m.sleep_w, false),
            (210.0, Phase::RampingUp, m.sleep_w + 10.0 * rate, false),
            (boards_on + 1.0, Phase::RampingUp, m.min_w + rate, true),
            (200.0 + m.ramp_up_s, Phase::Hashing, m.nominal_w, true),
        ];
        for (t, phase, watts, hashing) in cases {
            if t > 100.0 {
                u.sleep(100.0);
            }
            if t > 200.0 {
                u.wakeup(200.0);
            }
            assert_eq!(u.phase(t), phase, "t={t}");
            assert!(
                (u.watts(t) - watts).abs() < 1e-6,
                "t={t}: {} ≠ {watts}",
                u.watts(t)
            );
            assert_eq!(u.ths(t) > 0.0, hashing, "t={t}");
        }
        // Sleeping again while asleep does not restart anything; sleeping mid-ramp-up falls
        // from the power reached.
        let mut v = Unit::new(m, "default", 25.0, false, 0.0).unwrap();
        v.sleep(10.0);
        assert_eq!(v.phase(10.0), Phase::Asleep);
        v.wakeup(20.0);
        v.sleep(30.0);
        assert_eq!(v.phase(30.0 + m.ramp_down_s / 2.0), Phase::RampingDown);
        assert_eq!(v.ths(31.0), 0.0);
    }

    #[test]
    fn heat_derates_then_shuts_down() {
        let m = s19();
        let mut u = Unit::new(m, "+4", 25.0, true, 0.0).unwrap();
        let cool = u.watts(1.0);
        u.set_ambient(10.0, 44.0);
        let hot = u.watts(11.0);
        assert!(hot < cool && hot >= m.min_w, "{hot} vs {cool}");
        u.set_ambient(20.0, 50.0);
        assert_eq!(u.phase(21.0), Phase::Overheated);
        assert_eq!((u.watts(21.0), u.ths(21.0)), (m.sleep_w, 0.0));
        u.set_ambient(30.0, 25.0);
        assert_eq!(u.phase(31.0), Phase::RampingUp);
    }

    #[test]
    fn profiles_change_the_draw_and_unknown_ones_are_refused() {
        let m = s19();
        let mut u = Unit::new(m, "default", 25.0, true, 0.0).unwrap();
        assert!(u.set_profile(5.0, "-16"));
        assert_eq!(u.watts(5.0), m.min_w);
        assert!(u.ths(5.0) > 0.0);
        assert!(!u.set_profile(6.0, "turbo"));
        assert_eq!(u.profile().name, "-16");
        assert!(Unit::new(m, "turbo", 25.0, true, 0.0).is_none());
    }

    #[test]
    fn total_hashes_integrate_the_hashrate() {
        let m = s19();
        let mut u = Unit::new(m, "default", 25.0, true, 0.0).unwrap();
        assert!((u.total_th(100.0) - 100.0 * m.nominal_ths).abs() < 1e-6);
        u.sleep(100.0);
        assert!((u.total_th(1000.0) - 100.0 * m.nominal_ths).abs() < 1e-6);
        u.wakeup(1000.0);
        let after_ramp = u.total_th(1000.0 + m.ramp_up_s);
        let gained = after_ramp - 100.0 * m.nominal_ths;
        assert!(
            gained > 0.0 && gained < m.ramp_up_s * m.nominal_ths / 2.0,
            "{gained}"
        );
    }
}
