//! The agent's side of the agent protocol: register, heartbeat, long-poll the desired state,
//! and report a demand-response event's acknowledgements, over HTTP with a bearer token.

use std::time::Duration;

use wattmesh_proto::agent::{
    DesiredState, Heartbeat, HeartbeatAck, RegisterRequest, RegisterResponse,
};
use wattmesh_proto::api::ApiError;
use wattmesh_proto::energy::DrAcks;
use wattmesh_proto::plan::PlanReport;

/// How an agent call can fail, as far as the agent's behaviour differs.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The token was refused: register again (or, for the bootstrap token, give up).
    #[error("the control plane refused the token: {0}")]
    Unauthorized(String),
    /// The thing named in the path is unknown to the control plane (or not this site's), e.g.
    /// the DR event of [`ControlClient::dr_acks`]: retrying will not help.
    #[error("the control plane does not know it: {0}")]
    NotFound(String),
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

    /// Tells the control plane how the site's miners answered DR event `event_id`. `Ok` on
    /// its 204; [`CallError::NotFound`] when the event is unknown or not this site's.
    pub async fn dr_acks(
        &self,
        token: &str,
        event_id: &str,
        acks: &DrAcks,
    ) -> Result<(), CallError> {
        let url = self.url_with("/dr-events", [event_id, "acks"])?;
        let r = self.http.post(url).bearer_auth(token).json(acks);
        self.send(r, Duration::from_secs(10)).await.map(drop)
    }

    /// Tells the control plane how applying plan `plan_id` went. `Ok` on its 204;
    /// [`CallError::NotFound`] when the plan is unknown or not this site's.
    pub async fn plan_report(
        &self,
        token: &str,
        plan_id: &str,
        report: &PlanReport,
    ) -> Result<(), CallError> {
        let url = self.url_with("/plans", [plan_id, "report"])?;
        let r = self.http.post(url).bearer_auth(token).json(report);
        self.send(r, Duration::from_secs(10)).await.map(drop)
    }

    /// `path` with `segments` after it, each escaped as one segment: an id is data, never a
    /// path.
    fn url_with<'a>(
        &self,
        path: &str,
        segments: impl IntoIterator<Item = &'a str>,
    ) -> Result<reqwest::Url, CallError> {
        let mut url = reqwest::Url::parse(&self.url(path))
            .map_err(|e| CallError::Failed(format!("the control plane's URL: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| CallError::Failed("the control plane's URL cannot take a path".into()))?
            .extend(segments);
        Ok(url)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1/agent{path}", self.base)
    }

    /// Sends `req` and decodes its JSON answer.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let resp = self.send(req, timeout).await?;
        resp.json().await.map_err(|e| CallError::Failed(chain(&e)))
    }

    /// Sends `req`; any 2xx is the response, anything else a [`CallError`].
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, CallError> {
        let resp = req
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| CallError::Failed(chain(&e)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        // The control plane's errors are `{"error":{"code","message"}}`; say its message.
        let message = serde_json::from_str::<ApiError>(&body)
            .map(|e| e.error.message)
            .unwrap_or(body);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(CallError::Unauthorized(message));
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(CallError::NotFound(message));
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
