//! The site meter over Modbus TCP: the register map, a client that reads it
//! ([`MeterClient`]) and a simulated meter that serves it ([`SimMeter`]).
//!
//! Why: the planner's plan and a demand-response event are only as good as what the meter
//! confirms, and the P&L books energy that must reconcile with the meter. Real sites' revenue
//! meters and power-quality meters speak Modbus TCP, so the agent reads ours the same way, and
//! the simulated sites of `wattmesh up` serve the same registers from the simulated load.
//!
//! # Register map
//!
//! Protocol addresses (0-based, as they go on the wire; a manual's "4x" numbering adds 40001).
//! The same image is served as holding registers (function 0x03) and input registers (0x04),
//! since both conventions are common. Multi-register values are big-endian in bytes and in word
//! order (the high word first).
//!
//! | address | registers | value | type | unit |
//! |---|---|---|---|---|
//! | 0 | 2 | total active power, import positive | IEEE-754 f32 | kW |
//! | 2 | 4 | total active energy imported | u64 | Wh |
//! | 6 | 2 | heartbeat: answers served since start, wrapping | u32 | count |
//! | 8 | 2 | voltage L1–N | IEEE-754 f32 | V |
//! | 10 | 2 | voltage L2–N | IEEE-754 f32 | V |
//! | 12 | 2 | voltage L3–N | IEEE-754 f32 | V |
//! | 14 | 2 | frequency | IEEE-754 f32 | Hz |
//!
//! The shape is that of common panel meters: Schneider Electric's PowerLogic PM5000/PM8000 serve
//! total active power as an f32 in kW and imported energy as a 64-bit integer in Wh, high word
//! first; Eastron's SDM630 serves f32 values high word first as input registers. Energy is a u64
//! of Wh rather than an f32 of kWh because an f32 has 24 bits of mantissa: at 16.8 GWh (two
//! weeks of a 50 MW site) its step is already 1 kWh, too coarse for a P&L that must reconcile
//! with the meter within 1%. Real meters put these values at other addresses, and some swap
//! the word order (Carlo Gavazzi's EM24 sends the low word first), so the map will become
//! configurable per site; today every site uses this one.
//!
//! The heartbeat lets a reader tell a frozen meter (a communication module serving a stale
//! image, a known field failure) from a constant load: on a live meter it changes on every
//! answer, so two reads that see the same value mean the image is not being refreshed.
//!
//! # Layout
//! - this file: the map, [`Reading`], and the pure encoding of registers;
//! - `client`: [`MeterClient`], the agent's side;
//! - `sim`: [`SimMeter`], the simulated meter of the simulated sites, with failure injection.

mod client;
mod sim;

pub use client::{MeterClient, MeterError};
pub use sim::{Fault, SimMeter, SiteLoad};

/// The Modbus unit (slave) id the simulated meter answers to, and the usual default of meters.
pub const DEFAULT_UNIT_ID: u8 = 1;

/// Address of total active power (f32, kW).
pub const ACTIVE_POWER_KW: u16 = 0;
/// Address of imported active energy (u64, Wh).
pub const ENERGY_IMPORTED_WH: u16 = 2;
/// Address of the heartbeat counter (u32).
pub const HEARTBEAT: u16 = 6;
/// Address of the L1–N voltage (f32, V); L2 and L3 follow, two registers each.
pub const VOLTAGE_L1_V: u16 = 8;
/// Address of the frequency (f32, Hz).
pub const FREQUENCY_HZ: u16 = 14;
/// Registers in the map; addresses at or past this are out of range.
pub const MAP_LEN: u16 = 16;
/// Registers a [`MeterClient`] reads: power, energy and heartbeat, one contiguous block.
pub const READ_LEN: u16 = 8;
/// The most registers one Modbus read may ask for (the protocol's own limit, 0x7D).
pub const MAX_READ_REGISTERS: u16 = 125;

/// One reading of the site meter, validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Total active power imported by the site, kW; finite and never negative.
    pub active_power_kw: f64,
    /// Total active energy imported since the meter started, kWh; exact to the Wh.
    pub energy_kwh: f64,
    /// The heartbeat counter; see the module doc.
    pub counter: u32,
}

/// The whole register image a meter serves, before encoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Image {
    /// Total active power, kW.
    pub active_power_kw: f32,
    /// Imported active energy, Wh.
    pub energy_wh: u64,
    /// The heartbeat.
    pub counter: u32,
    /// Phase-to-neutral voltages L1, L2, L3, V.
    pub voltage_v: [f32; 3],
    /// Frequency, Hz.
    pub frequency_hz: f32,
}

impl Image {
    /// The registers of the map, address 0 first.
    pub fn encode(&self) -> [u16; MAP_LEN as usize] {
        let mut words = [0u16; MAP_LEN as usize];
        put(
            &mut words,
            ACTIVE_POWER_KW,
            &f32_words(self.active_power_kw),
        );
        put(&mut words, ENERGY_IMPORTED_WH, &u64_words(self.energy_wh));
        put(&mut words, HEARTBEAT, &u32_words(self.counter));
        for (phase, volts) in (0u16..).zip(self.voltage_v) {
            put(&mut words, VOLTAGE_L1_V + 2 * phase, &f32_words(volts));
        }
        put(&mut words, FREQUENCY_HZ, &f32_words(self.frequency_hz));
        words
    }
}

/// Why a block of registers is not a valid reading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The meter sent another number of registers than asked for.
    #[error("expected {expected} registers, got {got}")]
    Length { expected: usize, got: usize },
    /// A value no meter can measure: not a number, infinite, or negative import.
    #[error("{field} is {value}, which a meter cannot measure{hint}")]
    Impossible {
        field: &'static str,
        value: f64,
        hint: &'static str,
    },
}

/// Decodes the first [`READ_LEN`] registers of the map into a [`Reading`].
pub fn decode_reading(words: &[u16]) -> Result<Reading, DecodeError> {
    let &[p0, p1, e0, e1, e2, e3, c0, c1] = words else {
        return Err(DecodeError::Length {
            expected: usize::from(READ_LEN),
            got: words.len(),
        });
    };
    let power = f64::from(f32::from_bits(u32_from(p0, p1)));
    if !power.is_finite() {
        return Err(DecodeError::Impossible {
            field: "active power (kW)",
            value: power,
            hint: "",
        });
    }
    if power < 0.0 {
        // Sites import only; a negative import is the classic sign of a current transformer
        // mounted backwards, and booking it would pay the site for energy it consumed.
        return Err(DecodeError::Impossible {
            field: "active power (kW)",
            value: power,
            hint: " (a current transformer mounted backwards?)",
        });
    }
    let energy_wh = (u64::from(u32_from(e0, e1)) << 32) | u64::from(u32_from(e2, e3));
    Ok(Reading {
        // `+ 0.0` turns a meter's -0.0 into 0.0, so no reading shows a negative zero.
        active_power_kw: power + 0.0,
        // Exact: f64 holds every integer below 2^53 Wh (9 EWh).
        energy_kwh: energy_wh as f64 / 1000.0,
        counter: u32_from(c0, c1),
    })
}

fn put(words: &mut [u16], addr: u16, value: &[u16]) {
    let start = usize::from(addr);
    if let Some(slot) = words.get_mut(start..start + value.len()) {
        slot.copy_from_slice(value);
    }
}

fn f32_words(value: f32) -> [u16; 2] {
    u32_words(value.to_bits())
}

fn u32_words(value: u32) -> [u16; 2] {
    [(value >> 16) as u16, value as u16]
}

fn u64_words(value: u64) -> [u16; 4] {
    let [a, b] = u32_words((value >> 32) as u32);
    let [c, d] = u32_words(value as u32);
    [a, b, c, d]
}

fn u32_from(high: u16, low: u16) -> u32 {
    (u32::from(high) << 16) | u32::from(low)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(power: f32, energy_wh: u64, counter: u32) -> Image {
        Image {
            active_power_kw: power,
            energy_wh,
            counter,
            voltage_v: [277.0, 277.5, 276.5],
            frequency_hz: 60.0,
        }
    }

    #[test]
    fn encodes_high_word_first() {
        let words = image(1.0, 0x0001_0002_0003_0004, 0xDEAD_BEEF).encode();
        // 1.0f32 is 0x3F80_0000.
        assert_eq!(&words[0..2], &[0x3F80, 0x0000]);
        assert_eq!(&words[2..6], &[0x0001, 0x0002, 0x0003, 0x0004]);
        assert_eq!(&words[6..8], &[0xDEAD, 0xBEEF]);
        // 277.0f32 is 0x438A_8000; 60.0f32 is 0x4270_0000.
        assert_eq!(&words[8..10], &[0x438A, 0x8000]);
        assert_eq!(&words[14..16], &[0x4270, 0x0000]);
    }

    #[test]
    fn decodes_what_it_encodes() {
        let cases = [
            (0.0f32, 0u64, 0u32),
            (1234.5, 987_654_321, 7),
            (50_000.0, u64::from(u32::MAX) + 1, u32::MAX),
            // 2^53 Wh, the largest energy an f64 still holds to the Wh.
            (0.25, 1 << 53, 1),
        ];
        for (power, wh, counter) in cases {
            let words = image(power, wh, counter).encode();
            let reading = decode_reading(&words[..usize::from(READ_LEN)]);
            assert_eq!(
                reading,
                Ok(Reading {
                    active_power_kw: f64::from(power),
                    energy_kwh: wh as f64 / 1000.0,
                    counter,
                }),
                "{power} kW, {wh} Wh, counter {counter}"
            );
        }
    }

    #[test]
    fn rejects_values_no_meter_can_measure() {
        let cases = [
            (f32::NAN, "NaN"),
            (f32::INFINITY, "inf"),
            (f32::NEG_INFINITY, "-inf"),
            (-12.5, "backwards"),
        ];
        for (power, needle) in cases {
            let words = image(power, 1, 1).encode();
            let err = decode_reading(&words[..usize::from(READ_LEN)])
                .expect_err("an impossible power must not decode");
            assert!(
                matches!(err, DecodeError::Impossible { .. }),
                "{power}: {err:?}"
            );
            assert!(err.to_string().contains(needle), "{power}: {err}");
        }
    }

    #[test]
    fn rejects_the_wrong_number_of_registers() {
        let words = image(1.0, 1, 1).encode();
        for len in [0, 1, 7, 9, 16] {
            assert_eq!(
                decode_reading(&words[..len]),
                Err(DecodeError::Length {
                    expected: 8,
                    got: len
                }),
                "{len} registers"
            );
        }
    }
}
