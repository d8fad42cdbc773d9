//! The meter's holding registers, any count and any values: a reading or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattmesh_miner::meter::decode_reading;

fuzz_target!(|bytes: &[u8]| {
    let words: Vec<u16> = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))
        .collect();
    if let Ok(reading) = decode_reading(&words) {
        assert!(
            reading.active_power_kw.is_finite() && reading.active_power_kw >= 0.0,
            "a reading is finite and never negative: {reading:?}"
        );
    }
});
