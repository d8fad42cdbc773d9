//! The agent's side of the agent protocol: register, heartbeat, and long-poll the desired
//! state, over HTTP with a bearer token.

use std::time::Duration;

use wattmesh_proto::agent::{
    DesiredState, Heartbeat, HeartbeatAck, RegisterRequest, RegisterResponse,
};
use wattmesh_proto::api::ApiError;

/// How an agent call can fail, as far as the agent's behaviour differs.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The token was refused: register again (or, for the bootstrap token, give up).
    #[error("the control plane refused the token: {0}")]
    Unauthorized(String),
    /// Anything else: the control plane is away or unhappy; keep going and retry.
    #[error("{0}")]
    Failed(String),
}

/// A client of one control plane's agent API.
#[derive(Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    base: String,
}

impl ControlClient {
    pub fn new(control_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: control_url.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn register(
        &self,
        bootstrap: &str,
        req: &RegisterRequest,
    ) -> Result<RegisterResponse, CallError> {
        let r = self
            .http
            .post(self.url("/register"))
            .bearer_auth(bootstrap)
            .json(req);
        self.call(r, Duration::from_secs(10)).await
    }

    pub async fn heartbeat(&self, token: &str, hb: &Heartbeat) -> Result<HeartbeatAck, CallError> {
        let r = self
            .http
            .post(self.url("/heartbeat"))
            .bearer_auth(token)
            .json(hb);
        self.call(r, Duration::from_secs(10)).await
    }

    pub async fn desired(
        &self,
        token: &str,
        after: u64,
        wait_s: u64,
    ) -> Result<DesiredState, CallError> {
        let r = self
            .http
            .get(self.url(&format!("/desired?after={after}&wait_s={wait_s}")))
            .bearer_auth(token);
        self.call(r, Duration::from_secs(wait_s + 10)).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/agent{path}", self.base)
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| CallError::Failed(chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return resp.json().await.map_err(|e| CallError::Failed(chain(&e)));
        }
        let body = resp.text().await.unwrap_or_default();
        // The control plane's errors are `{"error":{"code","message"}}`; say its message.
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| e.error.message)
            .unwrap_or(body);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CallError::Unauthorized(message));
        }
        Err(CallError::Failed(format!("{status}: {message}")))
    }
}

/// An error with its causes: reqwest's own message alone rarely says what went wrong.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
