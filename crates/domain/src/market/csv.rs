//! Price series from CSV text, as users export them from their market data.
//!
//! The format, one row per interval:
//!
//! ```text
//! timestamp,usd_per_mwh
//! 2024-08-20T20:00:00Z,31.5
//! 2024-08-20T20:15:00Z,-4.2
//! 1724185800,5000
//! ```
//!
//! - `timestamp` is the **start** of the interval, either unix seconds (an integer) or RFC 3339
//!   with an offset (`2024-08-20T15:00:00-05:00`); rows may mix the two. ERCOT's reports label
//!   intervals by their end: shift them by one interval before feeding them here.
//! - `usd_per_mwh` is a decimal number; negative prices are valid (wind nights), prices up to the
//!   $5,000 offer cap are valid, anything above it is an error (it is not a price of any market
//!   we model, and a planner fed one would curtail for a price that never was).
//! - The header is optional: the first line is taken as a header when its first field is not a
//!   timestamp and its second is not a number. Blank lines are skipped; fields are trimmed and
//!   may be double-quoted; a UTF-8 byte-order mark is ignored.
//! - The interval is read off the first two rows and must be 5 or 15 minutes; every later row
//!   must follow the previous one by exactly one interval. A gap, a duplicate, a row out of
//!   order or a different spacing is an error naming its line: a silently filled gap would be a
//!   price the planner made up.
//!
//! Parsing takes `&str`: the caller reads the file, this module stays pure.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{
    CsvProblem, IntervalLength, MarketError, OFFER_CAP_USD_PER_MWH, PRICE_FLOOR_USD_PER_MWH,
    PriceSeries,
};

/// Parses a price CSV; see the module docs for the format.
pub fn parse(text: &str) -> Result<PriceSeries, MarketError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows: Vec<(usize, i64, f64)> = Vec::new();
    let mut seen_first = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = raw.split(',').map(unquote).collect();
        let first = !seen_first;
        seen_first = true;
        if first && is_header(&fields) {
            continue;
        }
        let err = |problem| MarketError::Csv { line, problem };
        if fields.len() != 2 {
            return Err(err(CsvProblem::FieldCount {
                found: fields.len(),
            }));
        }
        let timestamp = parse_timestamp(fields[0]).ok_or_else(|| {
            err(CsvProblem::Timestamp {
                value: fields[0].to_owned(),
            })
        })?;
        let price = parse_price(fields[1]).map_err(err)?;
        if let Some(&(_, previous, _)) = rows.last() {
            check_step(&rows, previous, timestamp).map_err(err)?;
        }
        rows.push((line, timestamp, price));
    }
    if rows.len() < 2 {
        return Err(MarketError::TooFewRows { rows: rows.len() });
    }
    let step = rows[1].1 - rows[0].1;
    let interval = IntervalLength::from_seconds(step).ok_or(MarketError::Csv {
        line: rows[1].0,
        problem: CsvProblem::UnsupportedInterval { step_s: step },
    })?;
    PriceSeries::new(
        rows[0].1,
        interval,
        rows.into_iter().map(|(_, _, p)| p).collect(),
    )
}

fn unquote(field: &str) -> &str {
    let f = field.trim();
    f.strip_prefix('"')
        .and_then(|f| f.strip_suffix('"'))
        .map(str::trim)
        .unwrap_or(f)
}

fn is_header(fields: &[&str]) -> bool {
    let not_timestamp = fields.first().is_none_or(|f| parse_timestamp(f).is_none());
    let not_number = fields.get(1).is_none_or(|f| f.parse::<f64>().is_err());
    not_timestamp && not_number
}

fn parse_timestamp(field: &str) -> Option<i64> {
    if let Ok(unix) = field.parse::<i64>() {
        return Some(unix);
    }
    OffsetDateTime::parse(field, &Rfc3339)
        .ok()
        .map(OffsetDateTime::unix_timestamp)
}

fn parse_price(field: &str) -> Result<f64, CsvProblem> {
    let value: f64 = field.parse().map_err(|_| CsvProblem::Price {
        value: field.to_owned(),
    })?;
    if !value.is_finite() {
        Err(CsvProblem::NotFinite { value })
    } else if value > OFFER_CAP_USD_PER_MWH {
        Err(CsvProblem::AboveCap { value })
    } else if value < PRICE_FLOOR_USD_PER_MWH {
        Err(CsvProblem::BelowFloor { value })
    } else {
        Ok(value)
    }
}

/// Checks the step from the previous row to `timestamp`, given the rows so far (at least one).
fn check_step(rows: &[(usize, i64, f64)], previous: i64, timestamp: i64) -> Result<(), CsvProblem> {
    let step = timestamp.saturating_sub(previous);
    if step == 0 {
        return Err(CsvProblem::Duplicate { timestamp });
    }
    if step < 0 {
        return Err(CsvProblem::OutOfOrder {
            timestamp,
            previous,
        });
    }
    // The interval is set by the first two rows; the second row itself sets it.
    let Some(interval_s) = rows.get(1).map(|r| r.1 - rows[0].1) else {
        return match IntervalLength::from_seconds(step) {
            Some(_) => Ok(()),
            None => Err(CsvProblem::UnsupportedInterval { step_s: step }),
        };
    };
    if step == interval_s {
        Ok(())
    } else if step % interval_s == 0 {
        Err(CsvProblem::Gap {
            previous,
            timestamp,
            missing: step / interval_s - 1,
        })
    } else {
        Err(CsvProblem::MixedResolution {
            step_s: step,
            interval_s,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_files() {
        let cases: &[(&str, i64, IntervalLength, &[f64])] = &[
            (
                "timestamp,usd_per_mwh\n2024-08-20T20:00:00Z,31.5\n2024-08-20T20:15:00Z,-4.2\n",
                1_724_184_000,
                IntervalLength::FifteenMinutes,
                &[31.5, -4.2],
            ),
            // No header, unix seconds, CRLF, blank lines, the cap itself.
            (
                "1724184000,10\r\n\r\n1724184300,5000\r\n1724184600,0\r\n",
                1_724_184_000,
                IntervalLength::FiveMinutes,
                &[10.0, 5_000.0, 0.0],
            ),
            // Offsets, quotes, a BOM, a custom header and mixed timestamp styles.
            (
                "\u{feff}\"time\",\"price\"\n\"2024-08-20T15:00:00-05:00\", 1e1\n1724184900,2\n",
                1_724_184_000,
                IntervalLength::FifteenMinutes,
                &[10.0, 2.0],
            ),
        ];
        for (text, start, interval, prices) in cases {
            let s = parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(s.start_unix_s(), *start, "{text:?}");
            assert_eq!(s.interval(), *interval, "{text:?}");
            assert_eq!(s.prices(), *prices, "{text:?}");
        }
    }

    #[test]
    fn bad_files_name_the_line() {
        use CsvProblem as P;
        let cases: &[(&str, MarketError)] = &[
            ("", MarketError::TooFewRows { rows: 0 }),
            (
                "timestamp,usd_per_mwh\n0,1\n",
                MarketError::TooFewRows { rows: 1 },
            ),
            (
                "0,1\n600,2\n",
                MarketError::Csv {
                    line: 2,
                    problem: P::UnsupportedInterval { step_s: 600 },
                },
            ),
            (
                "0,1\n900,2\n1800\n",
                MarketError::Csv {
                    line: 3,
                    problem: P::FieldCount { found: 1 },
                },
            ),
            (
                "0,1\n900,2,3\n",
                MarketError::Csv {
                    line: 2,
                    problem: P::FieldCount { found: 3 },
                },
            ),
            (
                "0,1\nyesterday,2\n",
                MarketError::Csv {
                    line: 2,
                    problem: P::Timestamp {
                        value: "yesterday".into(),
                    },
                },
            ),
            (
                "0,1\n900,cheap\n",
                MarketError::Csv {
                    line: 2,
                    problem: P::Price {
                        value: "cheap".into(),
                    },
                },
            ),
            // A truncated last line.
            (
                "0,1\n900,\n",
                MarketError::Csv {
                    line: 2,
                    problem: P::Price { value: "".into() },
                },
            ),
            (
                "0,1\n900,NaN\n",
                MarketError::Csv {
                    line: 2,
                    problem: P::NotFinite { value: f64::NAN },
                },
            ),
            (
                "0,1\n900,5001\n",
                MarketError::Csv {
                    line: 2,
                    problem: P::AboveCap { value: 5_001.0 },
                },
            ),
            (
                "0,1\n900,-6000\n",
                MarketError::Csv {
                    line: 2,
                    problem: P::BelowFloor { value: -6_000.0 },
                },
            ),
            (
                "h,p\n0,1\n900,2\n900,3\n",
                MarketError::Csv {
                    line: 4,
                    problem: P::Duplicate { timestamp: 900 },
                },
            ),
            (
                "0,1\n900,2\n1800,2\n0,3\n",
                MarketError::Csv {
                    line: 4,
                    problem: P::OutOfOrder {
                        timestamp: 0,
                        previous: 1800,
                    },
                },
            ),
            (
                "0,1\n900,2\n3600,3\n",
                MarketError::Csv {
                    line: 3,
                    problem: P::Gap {
                        previous: 900,
                        timestamp: 3600,
                        missing: 2,
                    },
                },
            ),
            (
                "0,1\n900,2\n1200,3\n",
                MarketError::Csv {
                    line: 3,
                    problem: P::MixedResolution {
                        step_s: 300,
                        interval_s: 900,
                    },
                },
            ),
            (
                "0,1\n300,2\n1200,3\n",
                MarketError::Csv {
                    line: 3,
                    problem: P::Gap {
                        previous: 300,
                        timestamp: 1200,
                        missing: 2,
                    },
                },
            ),
        ];
        for (text, want) in cases {
            let got = parse(text).expect_err(text);
            // NaN != NaN: compare the rendered errors.
            assert_eq!(got.to_string(), want.to_string(), "{text:?}");
        }
    }

    #[test]
    fn a_bad_first_row_is_an_error_not_a_header() {
        // A valid timestamp with a bad price is a row, not a header.
        let got = parse("0,abc\n900,2\n").unwrap_err();
        assert!(matches!(got, MarketError::Csv { line: 1, .. }), "{got}");
        // A bad timestamp with a valid price too.
        let got = parse("soon,12\n900,2\n").unwrap_err();
        assert!(matches!(got, MarketError::Csv { line: 1, .. }), "{got}");
    }
}
