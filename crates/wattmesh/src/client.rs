//! A small client of the control plane's operator API, used by the CLI commands and by `up`
//! to seed its demo fleet — over HTTP, the same path an operator's tooling takes.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use reqwest::StatusCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use wattmesh_proto::api::{API_PREFIX, ApiError};

use crate::cli::ControlTarget;

#[derive(Clone)]
pub struct ControlClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// What a write call ended in, so callers can treat "already exists" as success.
pub enum Created<T> {
    New(T),
    Exists,
}

impl ControlClient {
    pub fn new(control_url: &str, token: String) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(3))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: control_url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    pub fn from_target(target: &ControlTarget) -> Result<Self> {
        Self::new(&target.control_url, admin_token(target)?)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(self.http.get(self.url(path))).await?;
        decode(resp).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self.send(self.http.post(self.url(path)).json(body)).await?;
        decode(resp).await
    }

    pub async fn get_query<Q: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &Q,
    ) -> Result<T> {
        let resp = self
            .send(self.http.get(self.url(path)).query(query))
            .await?;
        decode(resp).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let resp = self.send(self.http.put(self.url(path)).json(body)).await?;
        decode(resp).await
    }

    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let resp = self
            .send(self.http.patch(self.url(path)).json(body))
            .await?;
        decode(resp).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let resp = self.send(self.http.delete(self.url(path))).await?;
        decode(resp).await
    }

    /// POSTs a new object; a 409 Conflict means it is already there.
    pub async fn create<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<Created<T>> {
        let resp = self.send(self.http.post(self.url(path)).json(body)).await?;
        if resp.status() == StatusCode::CONFLICT {
            return Ok(Created::Exists);
        }
        decode(resp).await.map(Created::New)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{API_PREFIX}{path}", self.base)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        // Named in records that say who did what (a revoked key's `revoked_by`).
        let operator = std::env::var("USER").unwrap_or_default();
        req.bearer_auth(&self.token)
            .header("x-wattmesh-operator", operator)
            .send()
            .await
            .with_context(|| format!("cannot reach the control plane at {}", self.base))
    }
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> Result<T> {
    if !resp.status().is_success() {
        return Err(api_error(resp).await);
    }
    resp.json::<T>()
        .await
        .context("the control plane sent a body this CLI does not understand")
}

async fn api_error(resp: reqwest::Response) -> anyhow::Error {
    let status = resp.status();
    match resp.json::<ApiError>().await {
        Ok(e) => anyhow!("{} ({}): {}", status, e.error.code, e.error.message),
        Err(_) => anyhow!("the control plane answered {status}"),
    }
}

/// The admin token: `--admin-token`, or the file the control plane wrote in its data dir.
pub fn admin_token(target: &ControlTarget) -> Result<String> {
    match &target.admin_token {
        Some(t) => Ok(t.clone()),
        None => read_secret(&target.data_dir.join("admin-token")).with_context(|| {
            format!(
                "no admin token: pass --admin-token, or point --data-dir at the control \
                 plane's data directory (looked in {})",
                target.data_dir.display()
            )
        }),
    }
}

/// Reads a token file written by the control plane, without its trailing newline.
pub fn read_secret(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(anyhow!("{} is empty", path.display()));
    }
    Ok(token)
}

/// Writes a secret readable by the owner only (0600).
pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(format!("{secret}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}
