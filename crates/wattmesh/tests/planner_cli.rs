//! `wattmesh planner` as a user runs it: the real binary, the README's example site file, a
//! generated price series; the JSON it prints, and a table of broken inputs that must each end
//! with a clear message and a non-zero exit code.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn wattmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wattmesh"))
        .args(args)
        .output()
        .expect("running wattmesh")
}

fn example_site() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/planner/site-georgia.toml")
}

/// Two days of synthetic prices, written where the test can point the binary at them.
fn prices(dir: &Path) -> PathBuf {
    let out = wattmesh(&["planner", "prices", "--days", "2", "--seed", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join("prices.csv");
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

#[test]
fn backtest_prints_every_policy_and_the_optimum_bounds_them() {
    let dir = tempfile::tempdir().unwrap();
    let prices = prices(dir.path());
    let text = std::fs::read_to_string(&prices).unwrap();
    assert_eq!(text.lines().next(), Some("timestamp,usd_per_mwh"));
    assert_eq!(
        text.lines().count(),
        1 + 2 * 96,
        "two days of quarter hours"
    );

    let site = example_site();
    let backtest = |extra: &[&str]| {
        let mut args = vec![
            "planner",
            "backtest",
            "--prices",
            prices.to_str().unwrap(),
            "--site",
            site.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        wattmesh(&args)
    };
    let out = backtest(&["--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["intervals"], 192);
    assert_eq!(report["optimum"]["exact"], true, "two days fit one window");
    let margin = |v: &serde_json::Value| v["margin_usd"].as_f64().unwrap();
    let optimum = margin(&report["optimum"]);
    let planner = margin(&report["planner"]);
    // LP tolerance: the optimum is never beaten by more than a cent.
    let tolerance = 0.01 + 1e-6 * optimum.abs();
    assert!(
        optimum + tolerance >= planner,
        "{optimum} vs planner {planner}"
    );
    for baseline in ["always_mine", "strike_price", "static_split"] {
        let b = margin(&report["baselines"][baseline]);
        assert!(optimum + tolerance >= b, "{optimum} vs {baseline} {b}");
    }
    assert!(report["planner"]["energy_mwh"].as_f64().unwrap() > 0.0);

    // The table names every policy.
    let out = backtest(&[]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    for row in [
        "planner",
        "always mine",
        "strike price",
        "static split",
        "optimum",
    ] {
        assert!(table.contains(row), "{row} in\n{table}");
    }
}

#[test]
fn broken_inputs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good_prices = prices(dir.path());
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let gap = write(
        "gap.csv",
        "timestamp,usd_per_mwh\n1704067200,30\n1704068100,31\n1704069900,32\n",
    );
    let not_a_number = write("nan.csv", "1704067200,30\n1704068100,thirty\n");
    let site_typo = write(
        "typo.toml",
        &std::fs::read_to_string(example_site())
            .unwrap()
            .replace("interconnect_kw", "interconect_kw"),
    );
    let bad_pue = write(
        "pue.toml",
        &std::fs::read_to_string(example_site())
            .unwrap()
            .replace("pue = 1.05", "pue = 0.5"),
    );
    let site = example_site();
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "missing price file",
            vec![p(&dir.path().join("none.csv")), p(&site)],
            "cannot read",
        ),
        ("a gap in the prices", vec![p(&gap), p(&site)], "line 4"),
        (
            "a price that is not a number",
            vec![p(&not_a_number), p(&site)],
            "line 2",
        ),
        (
            "a misspelt site key",
            vec![p(&good_prices), p(&site_typo)],
            "interconect_kw",
        ),
        ("a PUE below 1", vec![p(&good_prices), p(&bad_pue)], "pue"),
    ];
    for (name, files, want) in cases {
        let out = wattmesh(&[
            "planner", "backtest", "--prices", &files[0], "--site", &files[1],
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: succeeded");
        assert!(stderr.contains(want), "{name}: {want:?} not in {stderr}");
    }

    let out = wattmesh(&[
        "planner",
        "backtest",
        "--prices",
        &p(&good_prices),
        "--site",
        &p(&site),
        "--horizon",
        "4",
        "--step",
        "5",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--step"));
    for args in [
        &["planner", "prices", "--interval-minutes", "10"][..],
        &["planner", "prices", "--days", "0"][..],
        &["planner", "prices", "--start-unix-s=-5"][..],
        &["planner", "prices", "--start-unix-s", "9223372036854775807"][..],
    ] {
        let out = wattmesh(args);
        assert!(!out.status.success(), "{args:?}");
    }
}

#[test]
fn a_planning_interval_the_markets_do_not_use_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for minutes in ["7", "0", "60"] {
        let out = wattmesh(&[
            "control",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--plan-interval-minutes",
            minutes,
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{minutes}: {stderr}");
        assert!(stderr.contains("5- or 15-minute"), "{minutes}: {stderr}");
    }
    assert!(!data.exists(), "nothing was created");
}

#[test]
fn a_site_file_that_does_not_parse_is_refused_before_the_control_plane_is_called() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("site.toml");
    std::fs::write(&file, "name = \"a\"\ninterconnect_kw = \"lots\"\n").unwrap();
    // No control plane listens there: the file is refused first.
    let out = wattmesh(&[
        "planner",
        "model",
        "set",
        "a",
        "--file",
        file.to_str().unwrap(),
        "--control-url",
        "http://127.0.0.1:9",
        "--admin-token",
        "x",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("site file") && stderr.contains("interconnect_kw"),
        "{stderr}"
    );
}
