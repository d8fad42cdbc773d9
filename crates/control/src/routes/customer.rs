//! OpenAI's usage and costs endpoints for customers, with their own API key:
//! `GET /v1/organization/usage/completions`, `.../usage/embeddings` and
//! `GET /v1/organization/costs`, in OpenAI's
//! shapes and bucket parameters, always scoped to the key's own tenant. The gateway passes
//! them through with the customer's key; the control plane checks the key itself, so no other
//! credential can widen what a customer sees.
//!
//! Parameters OpenAI has and we do not (projects, users, batches, audio) are refused with a
//! 400 naming them, never ignored.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::value::RawValue;
use wattmesh_domain::ModelKind;
use wattmesh_store::{ApiKeyRecord, UsageGroup, UsageQuery};

use crate::ControlError;
use crate::clock::now_ms;
use crate::extract::bearer;
use crate::secrets::sha256_hex;
use crate::service::AppState;

/// The customer whose key the caller holds (not revoked, not expired).
async fn customer(s: &AppState, headers: &HeaderMap) -> Result<ApiKeyRecord, ControlError> {
    let hash = sha256_hex(bearer(headers)?);
    let now = now_ms();
    s.store
        .list_api_keys()
        .await?
        .into_iter()
        .find(|k| k.secret_sha256 == hash)
        .filter(|k| k.live(now))
        .ok_or_else(|| ControlError::Unauthorized("invalid API key".into()))
}

/// The query as OpenAI sends it: `group_by=model&group_by=api_key_id` or `group_by[]=...`.
fn params(raw: Option<&str>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        let key = key.strip_suffix("[]").unwrap_or(&key).to_owned();
        out.entry(key).or_default().push(value.into_owned());
    }
    out
}

/// What a bucketed request asks, checked.
struct Buckets {
    start_s: i64,
    width_s: i64,
    count: i64,
    end_s: i64,
    group_by: Vec<String>,
    /// `models=`: only these, when given.
    models: Option<Vec<String>>,
}

fn one(p: &BTreeMap<String, Vec<String>>, name: &str) -> Result<Option<String>, ControlError> {
    match p.get(name).map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([v]) => Ok(Some(v.clone())),
        Some(_) => Err(ControlError::BadRequest(format!(
            "{name} is given more than once"
        ))),
    }
}

fn int(p: &BTreeMap<String, Vec<String>>, name: &str) -> Result<Option<i64>, ControlError> {
    one(p, name)?
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                ControlError::BadRequest(format!("{name} must be an integer; got {v:?}"))
            })
        })
        .transpose()
}

/// Reads start_time, end_time, bucket_width, limit, page and group_by; refuses any other
/// parameter. `widths` are (name, seconds, default limit, max limit).
fn buckets(
    p: &BTreeMap<String, Vec<String>>,
    widths: &[(&str, i64, i64, i64)],
    groups: &[&str],
) -> Result<Buckets, ControlError> {
    const KNOWN: [&str; 6] = [
        "start_time",
        "end_time",
        "bucket_width",
        "limit",
        "page",
        "group_by",
    ];
    if let Some(other) = p.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(ControlError::BadRequest(format!(
            "the parameter {other:?} is not supported here; supported: {}",
            KNOWN.join(", ")
        )));
    }
    let start_s = int(p, "start_time")?
        .ok_or_else(|| ControlError::BadRequest("start_time (unix seconds) is required".into()))?;
    if start_s < 0 {
        return Err(ControlError::BadRequest(
            "start_time must not be negative".into(),
        ));
    }
    let width_name = one(p, "bucket_width")?.unwrap_or_else(|| "1d".to_owned());
    let &(_, width_s, default_limit, max_limit) =
        widths.iter().find(|w| w.0 == width_name).ok_or_else(|| {
            ControlError::BadRequest(format!(
                "bucket_width {width_name:?}: use {}",
                widths.iter().map(|w| w.0).collect::<Vec<_>>().join(", ")
            ))
        })?;
    let limit = int(p, "limit")?.unwrap_or(default_limit);
    if !(1..=max_limit).contains(&limit) {
        return Err(ControlError::BadRequest(format!(
            "limit must be between 1 and {max_limit} for bucket_width {width_name}"
        )));
    }
    // `page` is the cursor we hand out: the start of the next bucket.
    let from = match one(p, "page")? {
        Some(page) => page
            .parse::<i64>()
            .ok()
            .filter(|&t| t >= start_s)
            .ok_or_else(|| {
                ControlError::BadRequest(format!("page {page:?} is not a cursor we gave"))
            })?,
        None => start_s,
    };
    let end_s = match int(p, "end_time")? {
        Some(e) if e <= start_s => {
            return Err(ControlError::BadRequest(
                "end_time must be after start_time".into(),
            ));
        }
        Some(e) => e,
        None => now_ms() / 1000 + 1,
    };
    let group_by = p.get("group_by").cloned().unwrap_or_default();
    if let Some(g) = group_by.iter().find(|g| !groups.contains(&g.as_str())) {
        return Err(ControlError::BadRequest(format!(
            "group_by {g:?} is not supported; supported: {}",
            groups.join(", ")
        )));
    }
    let count = ((end_s - from) + width_s - 1) / width_s;
    Ok(Buckets {
        start_s: from,
        width_s,
        count: count.clamp(0, limit),
        end_s,
        group_by,
        models: p.get("models").cloned(),
    })
}

#[derive(Serialize)]
pub(crate) struct Page<R> {
    object: &'static str,
    data: Vec<Bucket<R>>,
    has_more: bool,
    next_page: Option<String>,
}

#[derive(Serialize)]
struct Bucket<R> {
    object: &'static str,
    start_time: i64,
    end_time: i64,
    results: Vec<R>,
}

#[derive(Serialize)]
pub(crate) struct CompletionsResult {
    object: &'static str,
    input_tokens: u64,
    output_tokens: u64,
    input_cached_tokens: u64,
    input_audio_tokens: u64,
    output_audio_tokens: u64,
    num_model_requests: u64,
    project_id: Option<String>,
    user_id: Option<String>,
    api_key_id: Option<String>,
    model: Option<String>,
    batch: Option<bool>,
}

#[derive(Serialize)]
pub(crate) struct EmbeddingsResult {
    object: &'static str,
    input_tokens: u64,
    num_model_requests: u64,
    project_id: Option<String>,
    user_id: Option<String>,
    api_key_id: Option<String>,
    model: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct CostsResult {
    object: &'static str,
    amount: Amount,
    line_item: Option<String>,
    project_id: Option<String>,
}

#[derive(Serialize)]
struct Amount {
    /// The exact decimal, written as a JSON number (never through a float).
    value: Box<RawValue>,
    currency: &'static str,
}

fn amount(value: Decimal) -> Result<Amount, ControlError> {
    let value = RawValue::from_string(value.normalize().to_string())
        .map_err(|e| ControlError::BadRequest(format!("amount: {e}")))?;
    Ok(Amount {
        value,
        currency: "usd",
    })
}

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// The models of `kind` the query covers: all of them, or those of them it names.
async fn models_of_kind(
    s: &AppState,
    kind: ModelKind,
    asked: Option<&Vec<String>>,
) -> Result<Vec<String>, ControlError> {
    Ok(s.store
        .list_models()
        .await?
        .into_iter()
        .filter(|m| m.kind == kind && asked.is_none_or(|a| a.contains(&m.name)))
        .map(|m| m.name)
        .collect())
}

/// Token usage of one kind of model, bucketed and grouped as OpenAI's usage endpoints are.
async fn usage_page<R>(
    s: &AppState,
    headers: &HeaderMap,
    raw: Option<&str>,
    kind: ModelKind,
    result: impl Fn(UsageGroup, &wattmesh_store::UsageTotal) -> R,
) -> Result<Page<R>, ControlError> {
    let key = customer(s, headers).await?;
    let p = params(raw);
    let b = buckets(
        &p,
        &[
            ("1m", MINUTE, 60, 1440),
            ("1h", HOUR, 24, 168),
            ("1d", DAY, 7, 31),
        ],
        &["model", "api_key_id"],
    )?;
    let by_model = b.group_by.iter().any(|g| g == "model");
    let by_key = b.group_by.iter().any(|g| g == "api_key_id");
    let group = match (by_model, by_key) {
        (true, true) => UsageGroup::ModelAndKey,
        (true, false) => UsageGroup::Model,
        (false, true) => UsageGroup::Key,
        (false, false) => UsageGroup::None,
    };
    let totals = s
        .store
        .usage_totals(&UsageQuery {
            tenant: Some(key.tenant.clone()),
            models: Some(models_of_kind(s, kind, b.models.as_ref()).await?),
            from_ms: b.start_s * 1000,
            to_ms: (b.start_s + b.count * b.width_s).min(b.end_s) * 1000,
            bucket_ms: Some(b.width_s * 1000),
            group,
        })
        .await?;
    paged(&b, totals, |t| Ok(result(group, t)))
}

/// `GET /v1/organization/usage/completions`: chat and text completion models.
pub(crate) async fn usage_completions(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<CompletionsResult>>, ControlError> {
    let page = usage_page(&s, &headers, raw.as_deref(), ModelKind::Chat, |group, t| {
        let (model, api_key_id) = group.split(t.group.as_deref());
        CompletionsResult {
            object: "organization.usage.completions.result",
            input_tokens: t.prompt_tokens,
            output_tokens: t.completion_tokens,
            input_cached_tokens: 0,
            input_audio_tokens: 0,
            output_audio_tokens: 0,
            num_model_requests: t.requests,
            project_id: None,
            user_id: None,
            api_key_id,
            model,
            batch: None,
        }
    })
    .await?;
    Ok(Json(page))
}

/// `GET /v1/organization/usage/embeddings`: embedding models.
pub(crate) async fn usage_embeddings(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<EmbeddingsResult>>, ControlError> {
    let page = usage_page(
        &s,
        &headers,
        raw.as_deref(),
        ModelKind::Embedding,
        |group, t| {
            let (model, api_key_id) = group.split(t.group.as_deref());
            EmbeddingsResult {
                object: "organization.usage.embeddings.result",
                input_tokens: t.prompt_tokens,
                num_model_requests: t.requests,
                project_id: None,
                user_id: None,
                api_key_id,
                model,
            }
        },
    )
    .await?;
    Ok(Json(page))
}

/// `GET /v1/organization/costs`: daily buckets, by `line_item` (the model) if asked.
pub(crate) async fn costs(
    State(s): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Json<Page<CostsResult>>, ControlError> {
    let key = customer(&s, &headers).await?;
    let p = params(raw.as_deref());
    let b = buckets(&p, &[("1d", DAY, 7, 180)], &["line_item"])?;
    let by_item = !b.group_by.is_empty();
    let totals = s
        .store
        .usage_totals(&UsageQuery {
            tenant: Some(key.tenant.clone()),
            models: b.models.clone(),
            from_ms: b.start_s * 1000,
            to_ms: (b.start_s + b.count * b.width_s).min(b.end_s) * 1000,
            bucket_ms: Some(b.width_s * 1000),
            group: if by_item {
                UsageGroup::Model
            } else {
                UsageGroup::None
            },
        })
        .await?;
    let page = paged(&b, totals, |t| {
        Ok(CostsResult {
            object: "organization.costs.result",
            amount: amount(t.cost)?,
            line_item: t.group.clone(),
            project_id: None,
        })
    })?;
    Ok(Json(page))
}

/// Every bucket of the page, empty ones included (as OpenAI answers), each with its results.
fn paged<R>(
    b: &Buckets,
    totals: Vec<wattmesh_store::UsageTotal>,
    result: impl Fn(&wattmesh_store::UsageTotal) -> Result<R, ControlError>,
) -> Result<Page<R>, ControlError> {
    let mut data: Vec<Bucket<R>> = (0..b.count)
        .map(|i| {
            let start = b.start_s + i * b.width_s;
            Bucket {
                object: "bucket",
                start_time: start,
                end_time: start + b.width_s,
                results: Vec::new(),
            }
        })
        .collect();
    for t in &totals {
        let start_s = t.bucket_start_ms.unwrap_or(b.start_s * 1000) / 1000;
        let i = (start_s - b.start_s) / b.width_s;
        if let Some(bucket) = usize::try_from(i).ok().and_then(|i| data.get_mut(i)) {
            bucket.results.push(result(t)?);
        }
    }
    let next = b.start_s + b.count * b.width_s;
    let has_more = next < b.end_s;
    Ok(Page {
        object: "page",
        data,
        has_more,
        next_page: has_more.then(|| next.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_read_like_openai_sends_them() {
        let p = params(Some(
            "start_time=10&group_by=model&group_by%5B%5D=api_key_id&x=a%20b+c",
        ));
        assert_eq!(p["start_time"], vec!["10"]);
        assert_eq!(p["group_by"], vec!["model", "api_key_id"]);
        assert_eq!(p["x"], vec!["a b c"]);
        // Broken escapes are kept as written (WHATWG form decoding), then refused as values.
        assert_eq!(params(Some("limit=%zz"))["limit"], vec!["%zz"]);
    }

    #[test]
    fn bucket_parameters_are_checked() {
        let widths = [("1h", HOUR, 24, 168), ("1d", DAY, 7, 31)];
        let ok = |q: &str| buckets(&params(Some(q)), &widths, &["model"]);
        let b = ok("start_time=0&end_time=86400&bucket_width=1h").unwrap();
        assert_eq!((b.count, b.width_s), (24, HOUR));
        let b = ok("start_time=0&end_time=864000").unwrap();
        assert_eq!(b.count, 7, "1d buckets, 7 by default");
        let b = ok("start_time=0&end_time=864000&page=604800").unwrap();
        assert_eq!((b.start_s, b.count), (604_800, 3));
        for bad in [
            "end_time=10",
            "start_time=x",
            "start_time=10&end_time=5",
            "start_time=0&bucket_width=1w",
            "start_time=0&limit=0",
            "start_time=0&limit=32",
            "start_time=0&group_by=project_id",
            "start_time=0&project_ids=p",
            "start_time=0&page=nope",
            "start_time=0&start_time=1",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn amounts_are_exact_json_numbers() {
        let a = amount("0.0000069000".parse().unwrap()).unwrap();
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"value":0.0000069,"currency":"usd"}"#
        );
    }
}
