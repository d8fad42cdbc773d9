//! A price file, any text: a series or an error naming the line, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wattmesh_domain::market::csv;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let _ = csv::parse(text);
    }
});
