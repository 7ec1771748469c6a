//! Persistence of release state, backend overrides and history in `state.dir`.
//!
//! `state.json` holds the release state and overrides, rewritten whole with temp file +
//! fsync + rename + directory fsync, so a crash leaves the old file or the new one, never a
//! torn one. `history.jsonl` is append-only, one JSON event per line. The [`StateStore`] trait
//! is the seam where a shared (etcd) store slots in beside this file one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::color::Color;
use crate::release::ReleaseState;

pub const STATE_FILE: &str = "state.json";
pub const HISTORY_FILE: &str = "history.jsonl";
/// The `version` written into state.json; a newer one is refused rather than misread.
pub const STATE_VERSION: u32 = 1;

/// Everything that must survive a restart.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub version: u32,
    #[serde(flatten)]
    pub releases: ReleaseState,
    /// service → color → backend addresses set with `releasectl backends`.
    #[serde(default)]
    pub overrides: BTreeMap<String, BTreeMap<Color, Vec<String>>>,
}

/// One line of history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// RFC 3339, UTC.
    pub time: String,
    /// switch, rollback, backends, reload, smoke, canary, promote, abort, alarm, start.
    pub action: String,
    #[serde(default)]
    pub services: Vec<String>,
    /// ok, refused, failed, rolled_back, …
    pub result: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl HistoryEvent {
    pub fn now(
        action: &str,
        services: Vec<String>,
        result: &str,
        detail: serde_json::Value,
    ) -> Self {
        HistoryEvent {
            time: rfc3339_now(),
            action: action.to_string(),
            services,
            result: result.to_string(),
            detail,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is not a valid state file: {message} (fix or move it away; switchyard will not start from a guess)")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
}

pub trait StateStore: Send + Sync {
    /// `Ok(None)` when nothing was ever saved.
    fn load(&self) -> Result<Option<PersistedState>, StoreError>;
    fn save(&self, state: &PersistedState) -> Result<(), StoreError>;
    fn append_history(&self, event: &HistoryEvent) -> Result<(), StoreError>;
    /// The newest `limit` events, oldest first.
    fn history(&self, limit: usize) -> Result<Vec<HistoryEvent>, StoreError>;
}

pub struct FileStore {
    dir: PathBuf,
    /// Serialises history appends from concurrent tasks.
    history_lock: Mutex<()>,
}

impl FileStore {
    pub fn new(dir: &Path) -> FileStore {
        FileStore {
            dir: dir.to_path_buf(),
            history_lock: Mutex::new(()),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }
}

impl StateStore for FileStore {
    fn load(&self) -> Result<Option<PersistedState>, StoreError> {
        let path = self.state_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let state: PersistedState =
            serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if state.version != STATE_VERSION {
            return Err(StoreError::Corrupt {
                path,
                message: format!(
                    "version {} is not the supported version {STATE_VERSION}",
                    state.version
                ),
            });
        }
        Ok(Some(state))
    }

    fn save(&self, state: &PersistedState) -> Result<(), StoreError> {
        let path = self.state_path();
        let mut bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        bytes.push(b'\n');
        write_atomic(&path, &bytes, 0o600).map_err(|source| StoreError::Write { path, source })
    }

    fn append_history(&self, event: &HistoryEvent) -> Result<(), StoreError> {
        let path = self.dir.join(HISTORY_FILE);
        let _g = self.history_lock.lock().unwrap();
        let mut line = serde_json::to_vec(event).expect("event serialises");
        line.push(b'\n');
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(&line)?;
            f.sync_data()
        };
        write().map_err(|source| StoreError::Write { path, source })
    }

    fn history(&self, limit: usize) -> Result<Vec<HistoryEvent>, StoreError> {
        let path = self.dir.join(HISTORY_FILE);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let mut events: Vec<HistoryEvent> = BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            // A line torn by a crash mid-append is skipped, not fatal.
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect();
        let skip = events.len().saturating_sub(limit);
        events.drain(..skip);
        Ok(events)
    }
}

/// Writes `bytes` to `path` so that readers see the old content or the new, never a mix:
/// temp file in the same directory, fsync, rename over, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The current UTC time as RFC 3339 (seconds precision).
pub fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

pub fn rfc3339(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let rem = unix % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::release::ServiceRelease;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    /// Pins the on-disk format: a state file written by this version must keep loading, and
    /// what we write must keep this shape.
    #[test]
    fn state_file_format_is_pinned() {
        let pinned = r#"{
  "version": 1,
  "services": {
    "api": {
      "active": "green",
      "previous": "blue",
      "canary": null
    }
  },
  "overrides": {
    "api": {
      "green": [
        "10.0.0.5:3000"
      ]
    }
  }
}
"#;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), pinned).unwrap();
        let store = FileStore::new(dir.path());
        let loaded = store.load().unwrap().unwrap();
        let mut expected = PersistedState {
            version: 1,
            ..Default::default()
        };
        expected.releases.services.insert(
            "api".into(),
            ServiceRelease {
                active: Color::Green,
                previous: Some(Color::Blue),
                canary: None,
            },
        );
        expected
            .overrides
            .entry("api".into())
            .or_default()
            .insert(Color::Green, vec!["10.0.0.5:3000".into()]);
        assert_eq!(loaded, expected);
        store.save(&expected).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap(),
            pinned
        );
    }

    #[test]
    fn corrupt_or_unknown_state_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), "{not json").unwrap();
        let err = FileStore::new(dir.path()).load().unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
        std::fs::write(
            dir.path().join(STATE_FILE),
            r#"{"version":9,"services":{}}"#,
        )
        .unwrap();
        assert!(FileStore::new(dir.path()).load().is_err());
    }

    #[test]
    fn missing_state_is_none_and_history_appends() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        assert_eq!(store.load().unwrap(), None);
        for i in 0..5 {
            let e = HistoryEvent::now(
                "switch",
                vec![format!("s{i}")],
                "ok",
                serde_json::Value::Null,
            );
            store.append_history(&e).unwrap();
        }
        let h = store.history(2).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].services, vec!["s4".to_string()]);
    }

    #[test]
    fn failed_write_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        write_atomic(&path, b"old", 0o600).unwrap();
        // A directory where the temp file would go makes the write fail.
        let blocked = dir
            .path()
            .join(format!(".f.json.tmp.{}", std::process::id()));
        std::fs::create_dir(&blocked).unwrap();
        assert!(write_atomic(&path, b"new", 0o600).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
    }
}
