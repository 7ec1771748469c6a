//! The admin API's bearer token: created on first start with 32 random bytes (hex), mode
//! 0600, and compared in constant time.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use subtle::ConstantTimeEq;

pub fn load_or_create(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => {
            if let Ok(meta) = std::fs::metadata(path) {
                if meta.permissions().mode() & 0o077 != 0 {
                    tracing::warn!(path = %path.display(), "admin token file is readable by others: chmod 600 it");
                }
            }
            return Ok(t.trim().to_string());
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes: [u8; 32] = rand::random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Atomic, so a crash never leaves an empty token file that blocks the next start.
    crate::persist::store::write_atomic(path, format!("{token}\n").as_bytes(), 0o600)?;
    tracing::info!(path = %path.display(), "created the admin API token");
    Ok(token)
}

/// Checks an `Authorization` header value against the token, in constant time.
pub fn authorized(header: Option<&[u8]>, token: &str) -> bool {
    let Some(value) = header else { return false };
    // The scheme is case-insensitive (RFC 9110 §11.1).
    if value.len() < 7 || !value[..7].eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = &value[7..];
    let given = given.trim_ascii();
    given.len() == token.len() && bool::from(given.ct_eq(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/admin.token");
        let t1 = load_or_create(&path).unwrap();
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&path).unwrap(), t1);
    }

    #[test]
    fn bearer_check() {
        assert!(authorized(Some(b"Bearer abc"), "abc"));
        assert!(authorized(Some(b"bearer abc"), "abc"));
        assert!(!authorized(Some(b"Bearer abd"), "abc"));
        assert!(!authorized(Some(b"Bearer ab"), "abc"));
        assert!(!authorized(Some(b"abc"), "abc"));
        assert!(!authorized(None, "abc"));
    }
}
