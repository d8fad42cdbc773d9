//! The control plane's configuration: already validated values, passed explicitly by the CLI.

use std::path::PathBuf;
use std::time::Duration;

use wattmesh_domain::market::IntervalLength;

/// How long a site may go without a heartbeat before it counts as not ready.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Holds `wattmesh.db` and the token files; created if missing.
    pub data_dir: PathBuf,
    /// A site whose last heartbeat is older is not ready: nothing new is placed there, its
    /// replicas show as `lost` and leave the gateway's routes.
    pub heartbeat_timeout: Duration,
    /// The live planner plans each site with a power model at the start of every interval.
    pub plan_interval: IntervalLength,
}

impl ControlConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            heartbeat_timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            plan_interval: IntervalLength::FifteenMinutes,
        }
    }
}
