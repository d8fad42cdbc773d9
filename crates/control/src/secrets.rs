//! Secrets: the admin and bootstrap tokens written once to 0600 files, per-agent tokens, and
//! customer API keys. Only SHA-256 hashes are stored; plaintexts are shown once.

use std::fs::{OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::Rng;
use rand::distr::Alphanumeric;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of a secret, the form every secret is stored and compared in.
pub(crate) fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// 128 bits from the thread's CSPRNG, as hex.
fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

pub(crate) fn new_admin_token() -> String {
    format!("wm-admin-{}", random_hex())
}

pub(crate) fn new_bootstrap_token() -> String {
    format!("wm-boot-{}", random_hex())
}

pub(crate) fn new_gateway_token() -> String {
    format!("wm-gw-{}", random_hex())
}

pub(crate) fn new_agent_token() -> String {
    format!("wm-agent-{}", random_hex())
}

/// Characters of an API key shown in listings so an operator can recognise it.
const KEY_PREFIX_LEN: usize = 12;

/// A customer API key (`sk-wm-` and 48 base62 characters, ~285 bits) and its visible prefix.
/// The OpenAI SDKs accept any string as a key.
pub(crate) fn new_api_key() -> (String, String) {
    let body: String = rand::rng()
        .sample_iter(&Alphanumeric)
        .take(48)
        .map(char::from)
        .collect();
    let secret = format!("sk-wm-{body}");
    let prefix = secret.chars().take(KEY_PREFIX_LEN).collect();
    (secret, prefix)
}

/// Writes a secret to `path`, readable by the owner only (0600), replacing what was there.
pub(crate) fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only when the file is created; an older file keeps its bits otherwise.
    file.set_permissions(Permissions::from_mode(0o600))?;
    file.write_all(format!("{secret}\n").as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_their_prefixes_and_differ() {
        assert!(new_admin_token().starts_with("wm-admin-"));
        assert_eq!(new_admin_token().len(), "wm-admin-".len() + 32);
        let (a, prefix) = new_api_key();
        assert!(a.starts_with("sk-wm-") && a.len() == 54 && a.starts_with(&prefix));
        assert_ne!(new_api_key().0, a);
        assert_eq!(sha256_hex("abc").len(), 64);
    }
}
