//! The price-file parser against arbitrary and mutated text (property-based fuzzing that runs
//! in every test run): it never panics, and what it accepts is a series it can stand behind.

use proptest::prelude::*;
use wattmesh_domain::market::PriceSeries;

const GOOD: &str = "timestamp,usd_per_mwh\n1704067200,30.5\n1704068100,-4\n1704069000,5000\n2024-01-01T00:45:00Z,31\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = PriceSeries::parse_csv(&text);
    }

    #[test]
    fn csv_shaped_text_never_panics(text in "[0-9,.\\-:TZe+\\n ]{0,300}") {
        if let Ok(series) = PriceSeries::parse_csv(&text) {
            prop_assert!(!series.is_empty());
            prop_assert!(series.prices().iter().all(|p| p.is_finite()));
        }
    }

    #[test]
    fn mutated_files_parse_or_fail_cleanly(
        flips in prop::collection::vec((any::<prop::sample::Index>(), "[0-9,.\\-:TZ\\n]"), 0..4),
    ) {
        let mut text = GOOD.to_owned();
        for (at, with) in flips {
            let i = at.index(text.len());
            if text.is_char_boundary(i) && text.is_char_boundary(i + 1) {
                text.replace_range(i..i + 1, &with);
            }
        }
        if let Ok(series) = PriceSeries::parse_csv(&text) {
            prop_assert!(series.prices().iter().all(|p| p.is_finite() && p.abs() <= 5_000.0));
        }
    }
}
