//! What the agent keeps in its state directory so that a restarted agent does not depend on
//! the control plane: the last desired state (static stability: it serves that state at once)
//! and its agent token (so it resumes its session instead of registering, which would rotate
//! the token), and the demand-response event whose miners it put to sleep and has not woken
//! yet (so an agent that was down when that event ended or was cancelled wakes them). Files are written to a temporary name and renamed, so a crash never leaves half
//! a file; the token file is readable by its owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use wattmesh_proto::agent::{DesiredState, RegisterRequest};

const DESIRED_FILE: &str = "desired.json";
const TOKEN_FILE: &str = "agent-token.json";
const SHEDDING_FILE: &str = "dr-shedding.json";

/// The DR event the agent put the site's miners to sleep for and has not woken them from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shedding {
    pub event_id: String,
}

/// The agent's token and what it was registered with: a token is reused only by an agent
/// registering the same way with the same control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SavedToken {
    pub control_url: String,
    pub registration: RegisterRequest,
    pub agent_token: String,
}

/// The agent's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Opens (creating) the directory.
    pub fn open(dir: &Path) -> std::io::Result<StateDir> {
        std::fs::create_dir_all(dir)?;
        Ok(StateDir {
            dir: dir.to_owned(),
        })
    }

    /// The last desired state saved, if any is there and readable.
    pub fn load_desired(&self) -> Option<DesiredState> {
        self.load(DESIRED_FILE)
    }

    pub fn save_desired(&self, state: &DesiredState) -> std::io::Result<()> {
        self.save(DESIRED_FILE, state, false)
    }

    pub fn load_token(&self) -> Option<SavedToken> {
        self.load(TOKEN_FILE)
    }

    pub fn save_token(&self, token: &SavedToken) -> std::io::Result<()> {
        self.save(TOKEN_FILE, token, true)
    }

    /// Forgets a token the control plane refused.
    pub fn forget_token(&self) -> std::io::Result<()> {
        self.remove(TOKEN_FILE)
    }

    pub fn load_shedding(&self) -> Option<Shedding> {
        self.load(SHEDDING_FILE)
    }

    pub fn save_shedding(&self, shedding: &Shedding) -> std::io::Result<()> {
        self.save(SHEDDING_FILE, shedding, false)
    }

    /// The miners are awake again (or were never put to sleep).
    pub fn forget_shedding(&self) -> std::io::Result<()> {
        self.remove(SHEDDING_FILE)
    }

    fn remove(&self, name: &str) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn load<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        let path = self.dir.join(name);
        let text = std::fs::read_to_string(&path).ok()?;
        match serde_json::from_str(&text) {
            Ok(value) => Some(value),
            Err(e) => {
                tracing::warn!("ignoring {}: {e}", path.display());
                None
            }
        }
    }

    fn save<T: Serialize>(&self, name: &str, value: &T, secret: bool) -> std::io::Result<()> {
        let bytes = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        #[cfg(not(unix))]
        let _ = secret;
        let mut file = options.open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wattmesh_proto::agent::NodeReport;

    #[test]
    fn token_round_trips_and_only_its_owner_can_read_it() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(&tmp.path().join("agent")).unwrap();
        assert_eq!(dir.load_token(), None);
        let saved = SavedToken {
            control_url: "http://c".into(),
            registration: RegisterRequest {
                site: "s".into(),
                region: "r".into(),
                power_price_usd_per_mwh: None,
                nodes: vec![NodeReport {
                    name: "n".into(),
                    memory_bytes: 1,
                }],
            },
            agent_token: "secret".into(),
        };
        dir.save_token(&saved).unwrap();
        dir.save_token(&saved).unwrap();
        assert_eq!(dir.load_token(), Some(saved));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(tmp.path().join("agent").join(TOKEN_FILE)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        }
        dir.forget_token().unwrap();
        dir.forget_token().unwrap();
        assert_eq!(dir.load_token(), None);
    }

    #[test]
    fn desired_state_round_trips_and_garbage_is_ignored() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        let state = DesiredState {
            version: 3,
            replicas: Vec::new(),
            dr: Some(wattmesh_proto::energy::DrDirective {
                event_id: "dr-1".into(),
                target_kw: 100.0,
                starts_at_ms: 1,
                ends_at_ms: 2,
                shed_inference: false,
            }),
            plan: Some(wattmesh_proto::plan::PlanDirective {
                plan_id: "plan-1".into(),
                starts_at_ms: 1,
                ends_at_ms: 2,
                asic_groups: vec![wattmesh_proto::plan::AsicTarget {
                    name: "Antminer S21".into(),
                    units: 3,
                    units_hashing: 2,
                    watts_per_unit: 3_000.0,
                }],
                gpu_groups: vec![],
                expected_meter_kw: 7.5,
            }),
        };
        dir.save_desired(&state).unwrap();
        assert_eq!(dir.load_desired(), Some(state));
        std::fs::write(tmp.path().join(DESIRED_FILE), "{").unwrap();
        assert_eq!(dir.load_desired(), None);
    }

    #[test]
    fn the_shedding_marker_round_trips_and_is_forgotten() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir::open(tmp.path()).unwrap();
        assert_eq!(dir.load_shedding(), None);
        let shedding = Shedding {
            event_id: "dr-1".into(),
        };
        dir.save_shedding(&shedding).unwrap();
        assert_eq!(dir.load_shedding(), Some(shedding));
        dir.forget_shedding().unwrap();
        dir.forget_shedding().unwrap();
        assert_eq!(dir.load_shedding(), None);
    }
}
