//! Architecture invariant: crate dependencies point down only (DESIGN.md, ARCHITECTURE.md).
//! Reads `cargo metadata` and fails naming any edge that is not in the table below.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each workspace crate and the workspace crates it may depend on (normal dependencies).
const ALLOWED: &[(&str, &[&str])] = &[
    ("wattmesh-domain", &[]),
    ("wattmesh-proto", &["wattmesh-domain"]),
    ("wattmesh-store", &["wattmesh-domain", "wattmesh-proto"]),
    ("wattmesh-engine", &["wattmesh-domain", "wattmesh-proto"]),
    ("wattmesh-miner", &["wattmesh-domain", "wattmesh-proto"]),
    (
        "wattmesh-control",
        &["wattmesh-domain", "wattmesh-proto", "wattmesh-store"],
    ),
    ("wattmesh-gateway", &["wattmesh-domain", "wattmesh-proto"]),
    (
        "wattmesh-agent",
        &[
            "wattmesh-domain",
            "wattmesh-proto",
            "wattmesh-engine",
            "wattmesh-miner",
        ],
    ),
    (
        "wattmesh",
        &[
            "wattmesh-domain",
            "wattmesh-proto",
            "wattmesh-store",
            "wattmesh-engine",
            "wattmesh-miner",
            "wattmesh-control",
            "wattmesh-gateway",
            "wattmesh-agent",
        ],
    ),
];

#[test]
fn crate_dependencies_point_down_only() {
    let out = Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");

    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(k, v)| (*k, v.iter().copied().collect()))
        .collect();
    let mut seen = BTreeSet::new();
    let mut violations = Vec::new();
    for pkg in meta["packages"].as_array().expect("packages") {
        let name = pkg["name"].as_str().expect("name");
        seen.insert(name.to_owned());
        let Some(ok) = allowed.get(name) else {
            violations.push(format!("{name} is not in the layering table"));
            continue;
        };
        for dep in pkg["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().expect("dep name");
            let normal = dep["kind"].is_null();
            if normal && dep_name.starts_with("wattmesh") && !ok.contains(dep_name) {
                violations.push(format!("{name} -> {dep_name}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies that point the wrong way: {violations:#?}"
    );
    for (name, _) in ALLOWED {
        assert!(
            seen.contains(*name),
            "{name} is in the table but not in the workspace"
        );
    }
}
