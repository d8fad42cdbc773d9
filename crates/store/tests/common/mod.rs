//! Shared setup of the store's tests: a database in a temp dir, and the sites most tests use.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;

use wattmesh_proto::api::SiteSpec;
use wattmesh_store::{SqliteStore, Store};

pub async fn open(dir: &Path) -> SqliteStore {
    SqliteStore::open(&dir.join("wattmesh.db")).await.unwrap()
}

/// Region `us` with sites `a` and `b`, power at 40 USD/MWh.
pub async fn seed(s: &SqliteStore) {
    s.create_region("us").await.unwrap();
    for name in ["a", "b"] {
        s.create_site(&SiteSpec {
            name: name.into(),
            region: "us".into(),
            power_price_usd_per_mwh: 40.into(),
        })
        .await
        .unwrap();
    }
}
