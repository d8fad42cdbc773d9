//! LuxOS's commands over [`MinerClient`]: `logon`/`logoff` sessions, `curtail` sleep and
//! wakeup, `profiles` and `profileset`.
//!
//! LuxOS lets one session at a time change a miner; a second `logon` is refused with code 402.
//! We never borrow someone else's session (asic-rs reuses any session id it finds): a held
//! miner is [`MinerError::SessionHeld`], for the operator to see. And we always log off, even
//! when the command failed ([`with_session`]), so a fleet operation never leaves hundreds of
//! miners locked against the next one.

use std::fmt;

use serde_json::Value;

use crate::api::{self, ApiError, Reply};
use crate::client::{MinerClient, MinerError};

/// A LuxOS session id, as `logon` returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A session id made by hand (tests; a session logged on elsewhere). Must be non-empty and
    /// free of `,`, which separates LuxOS parameters.
    pub fn new(id: &str) -> Option<SessionId> {
        (!id.is_empty() && !id.contains(',')).then(|| SessionId(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What `curtail` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Curtail {
    /// Hashboards and PSU output off; draws only the control board. Survives a reboot.
    Sleep,
    /// Back to hashing at the current profile.
    Wakeup,
}

impl Curtail {
    /// The word LuxOS takes after the session id.
    pub fn as_str(self) -> &'static str {
        match self {
            Curtail::Sleep => "sleep",
            Curtail::Wakeup => "wakeup",
        }
    }

    /// Reads the word, as a miner does.
    pub fn parse(word: &str) -> Option<Curtail> {
        match word {
            "sleep" => Some(Curtail::Sleep),
            "wakeup" => Some(Curtail::Wakeup),
            _ => None,
        }
    }
}

/// One of a miner's built-in power profiles, as `profiles` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// What `profileset` takes.
    pub name: String,
    /// The draw the miner settles at on this profile, W.
    pub watts: f64,
}

/// Reads a `profiles` reply: `PROFILES`, one entry per profile with `Profile Name` and
/// `Watts`. Every entry must be readable: a planner choosing a power step from a partial list
/// could pick one the miner does not have, or miss the one it wants.
pub fn parse_profiles(reply: &Reply) -> Result<Vec<Profile>, ApiError> {
    let malformed = |what: String| ApiError::Malformed(format!("PROFILES: {what}"));
    let entries = reply
        .sections
        .get("PROFILES")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no list".into()))?;
    if entries.is_empty() {
        return Err(malformed("no profile".into()));
    }
    entries
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            let entry = entry
                .as_object()
                .ok_or_else(|| malformed(format!("entry {i} is not an object")))?;
            let name = entry
                .get("Profile Name")
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .ok_or_else(|| malformed(format!("entry {i} has no Profile Name")))?;
            // `number` parses strings, and "NaN" or "inf" would parse: refuse them here.
            let watts = api::number(entry, "Watts")
                .filter(|w| w.is_finite() && *w >= 0.0)
                .ok_or_else(|| malformed(format!("profile {name:?} has no usable Watts")))?;
            Ok(Profile {
                name: name.to_owned(),
                watts,
            })
        })
        .collect()
}

// === impl MinerClient: LuxOS ===

impl MinerClient {
    /// Opens a session. Code 402 (someone else holds the miner) is
    /// [`MinerError::SessionHeld`].
    pub async fn logon(&self) -> Result<SessionId, MinerError> {
        let reply = match self.call_one("logon", None).await {
            Err(MinerError::Api {
                source:
                    api::ApiError::Refused {
                        code: api::code::SESSION_HELD,
                        msg,
                        ..
                    },
                ..
            }) => {
                return Err(MinerError::SessionHeld {
                    addr: self.addr,
                    msg,
                });
            }
            other => other?,
        };
        let id = api::session_id(&reply).map_err(|e| self.api_error(e))?;
        SessionId::new(&id).ok_or_else(|| {
            self.api_error(api::ApiError::Malformed(format!(
                "session id {id:?} contains a comma"
            )))
        })
    }

    /// Closes `session`.
    pub async fn logoff(&self, session: &SessionId) -> Result<(), MinerError> {
        self.call_one("logoff", Some(session.as_str())).await?;
        Ok(())
    }

    /// Puts the miner to sleep or wakes it up. The reply acknowledges the command; the
    /// miner's own telemetry confirms it (see [`crate::fleet`]).
    pub async fn curtail(&self, session: &SessionId, what: Curtail) -> Result<(), MinerError> {
        let parameter = format!("{session},{}", what.as_str());
        self.call_one("curtail", Some(&parameter)).await?;
        Ok(())
    }

    /// `profiles`: the miner's built-in power profiles, in the miner's order. A reply without
    /// a readable list of them is [`MinerError::Api`] (malformed).
    pub async fn profiles(&self) -> Result<Vec<Profile>, MinerError> {
        let reply = self.call_one("profiles", None).await?;
        parse_profiles(&reply).map_err(|e| self.api_error(e))
    }

    /// Switches the miner to the built-in profile `profile` (a power/frequency step).
    pub async fn profileset(&self, session: &SessionId, profile: &str) -> Result<(), MinerError> {
        if profile.is_empty() || profile.contains(',') {
            return Err(MinerError::InvalidArgument {
                addr: self.addr,
                what: format!("profile name {profile:?}"),
            });
        }
        let parameter = format!("{session},{profile}");
        self.call_one("profileset", Some(&parameter)).await?;
        Ok(())
    }
}

/// Logs on, runs `f` with the session, and logs off whether `f` succeeded or not.
///
/// `f`'s error wins over a logoff error (which is logged); if `f` succeeded and only the
/// logoff failed, that is [`MinerError::Logoff`]: the work is done, but the miner may stay
/// locked until LuxOS times the session out, and the caller should know.
pub async fn with_session<T>(
    client: &MinerClient,
    f: impl AsyncFnOnce(&SessionId) -> Result<T, MinerError>,
) -> Result<T, MinerError> {
    let session = client.logon().await?;
    let result = f(&session).await;
    let logoff = client.logoff(&session).await;
    match (result, logoff) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(e)) => Err(MinerError::Logoff {
            addr: client.addr,
            source: Box::new(e),
        }),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(logoff)) => {
            tracing::warn!(miner = %client.addr, error = %logoff, "logoff failed after an error");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;

    fn reply(profiles: Value) -> Reply {
        let mut sections = Map::new();
        sections.insert("PROFILES".into(), profiles);
        Reply::ok(301, "Profiles", 0, sections)
    }

    #[test]
    fn profiles_are_read_or_refused_as_malformed() {
        let good = reply(json!([
            {"Profile Name": "-1", "Watts": 2916, "Hashrate": 135.6},
            {"Profile Name": "default", "Watts": "3010"},
        ]));
        assert_eq!(
            parse_profiles(&good).unwrap(),
            [
                Profile {
                    name: "-1".into(),
                    watts: 2916.0
                },
                Profile {
                    name: "default".into(),
                    watts: 3010.0
                },
            ]
        );
        let bad = [
            json!([]),
            json!({"Profile Name": "default", "Watts": 3010}),
            json!(["default"]),
            json!([{"Watts": 3010}]),
            json!([{"Profile Name": "", "Watts": 3010}]),
            json!([{"Profile Name": "default"}]),
            json!([{"Profile Name": "default", "Watts": "NaN"}]),
            json!([{"Profile Name": "default", "Watts": -1}]),
            json!([{"Profile Name": "default", "Watts": 3010}, {"Profile Name": "+1"}]),
        ];
        for profiles in bad {
            let result = parse_profiles(&reply(profiles.clone()));
            assert!(
                matches!(result, Err(ApiError::Malformed(_))),
                "{profiles}: {result:?}"
            );
        }
        assert!(parse_profiles(&Reply::ok(301, "Profiles", 0, Map::new())).is_err());
    }
}
