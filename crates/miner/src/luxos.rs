//! LuxOS's privileged commands over [`MinerClient`]: `logon`/`logoff` sessions, `curtail`
//! sleep and wakeup, `profileset`.
//!
//! LuxOS lets one session at a time change a miner; a second `logon` is refused with code 402.
//! We never borrow someone else's session (asic-rs reuses any session id it finds): a held
//! miner is [`MinerError::SessionHeld`], for the operator to see. And we always log off, even
//! when the command failed ([`with_session`]), so a fleet operation never leaves hundreds of
//! miners locked against the next one.

use std::fmt;

use crate::api;
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
