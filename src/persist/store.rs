//! Persistence of release state, backend overrides and history in `state.dir`.
//!
//! `state.json` holds the release state and overrides, rewritten whole with temp file +
//! fsync + rename + directory fsync, so a crash leaves the old file or the new one, never a
//! torn one. `history.jsonl` is appended to, one JSON event per line, and bounded: once it
//! holds more than [`HISTORY_MAX_EVENTS`] events or [`HISTORY_MAX_BYTES`] bytes it is
//! rewritten (the same atomic way) with its newest half, so a year of releases cannot fill
//! the disk. The [`StateStore`] trait is the seam where a shared (etcd) store slots in beside
//! this file one.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::api::HistoryEvent;
use crate::core::color::Color;
use crate::core::release::ReleaseState;

pub const STATE_FILE: &str = "state.json";
pub const HISTORY_FILE: &str = "history.jsonl";
/// The `version` written into state.json; a newer one is refused rather than misread.
pub const STATE_VERSION: u32 = 1;
/// `history.jsonl` is rotated once it holds more events than this…
pub const HISTORY_MAX_EVENTS: usize = 10_000;
/// …or more bytes than this (events that list many smoke failures are large).
pub const HISTORY_MAX_BYTES: u64 = 8 << 20;

/// Everything that must survive a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub version: u32,
    #[serde(flatten)]
    pub releases: ReleaseState,
    /// service → color → backend addresses set with `releasectl backends`.
    #[serde(default)]
    pub overrides: BTreeMap<String, BTreeMap<Color, Vec<String>>>,
}

/// A fresh state (nothing released yet) says which format it is in: a state written from it
/// must load again after a restart.
impl Default for PersistedState {
    fn default() -> Self {
        PersistedState {
            version: STATE_VERSION,
            releases: ReleaseState::default(),
            overrides: BTreeMap::new(),
        }
    }
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
    /// A shared store's state moved since this instance applied it: another instance
    /// committed first.
    #[error("the release state changed meanwhile (another instance committed revision {current}); nothing changed — check `releasectl status` and try again")]
    Conflict { current: i64 },
    /// A change only the site's leader may make, from an instance that no longer leads.
    #[error("this instance no longer leads the site; the new leader carries on")]
    NotLeader,
    /// A shared store cannot be reached.
    #[error("etcd is unreachable ({endpoints}): {message}; releases are refused while it is, and this instance keeps serving its last applied state")]
    Unavailable { endpoints: String, message: String },
}

#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Where the state lives, for messages (a path).
    fn location(&self) -> String;
    /// `Ok(None)` when nothing was ever saved. At start, before any I/O runtime: a shared
    /// store answers from its local cache here.
    fn load(&self) -> Result<Option<PersistedState>, StoreError>;
    /// Commits the next state. A shared store commits it only if nobody else did since the
    /// state it last applied (`StoreError::Conflict` otherwise).
    async fn save(&self, state: &PersistedState) -> Result<(), StoreError>;
    /// Commits a change only the site's leader may make (a canary step, the SLO watch's
    /// rollback). A shared store also requires, in the same transaction, that this instance
    /// still holds the leadership: a leader that lost it cannot write after another took
    /// over (`StoreError::NotLeader`). One instance alone always leads.
    async fn save_as_leader(&self, state: &PersistedState) -> Result<(), StoreError> {
        self.save(state).await
    }
    /// Called once what `save` committed is published (serving): a shared store does its
    /// follow-up writes here (its local cache, its registry entry), so the instance that
    /// took a release is not the last to serve it.
    async fn after_publish(&self) {}
    async fn append_history(&self, event: &HistoryEvent) -> Result<(), StoreError>;
    /// The newest `limit` events, oldest first.
    async fn history(&self, limit: usize) -> Result<Vec<HistoryEvent>, StoreError>;
}

pub struct FileStore {
    dir: PathBuf,
    /// Serialises history appends (and rotations) from concurrent tasks; holds the size of
    /// `history.jsonl` once known.
    history: Mutex<Option<HistorySize>>,
    max_events: usize,
    max_bytes: u64,
}

/// What `history.jsonl` holds: lines (events) and bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HistorySize {
    events: usize,
    bytes: u64,
}

impl FileStore {
    pub fn new(dir: &Path) -> FileStore {
        Self::with_history_limits(dir, HISTORY_MAX_EVENTS, HISTORY_MAX_BYTES)
    }

    /// A store whose history is rotated past `max_events` events or `max_bytes` bytes.
    pub fn with_history_limits(dir: &Path, max_events: usize, max_bytes: u64) -> FileStore {
        FileStore {
            dir: dir.to_path_buf(),
            history: Mutex::new(None),
            max_events: max_events.max(2),
            max_bytes: max_bytes.max(2),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    fn history_path(&self) -> PathBuf {
        self.dir.join(HISTORY_FILE)
    }

    /// Counts the events and bytes of `history.jsonl` (read once, then kept up to date), and
    /// whether its last line is torn (no newline: a crash mid-append).
    fn measure(path: &Path) -> io::Result<(HistorySize, bool)> {
        match std::fs::read(path) {
            Ok(bytes) => Ok((
                HistorySize {
                    events: bytes
                        .split(|&c| c == b'\n')
                        .filter(|l| !l.is_empty())
                        .count(),
                    bytes: bytes.len() as u64,
                },
                bytes.last().is_some_and(|&c| c != b'\n'),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok((
                HistorySize {
                    events: 0,
                    bytes: 0,
                },
                false,
            )),
            Err(e) => Err(e),
        }
    }

    /// Rewrites `history.jsonl` with its newest half (by events and by bytes), atomically: a
    /// failed write leaves the old file as it was. A torn last line (a crash mid-append) is
    /// dropped.
    fn rotate(&self, path: &Path) -> io::Result<HistorySize> {
        let bytes = std::fs::read(path)?;
        let mut lines: Vec<&[u8]> = bytes.split_inclusive(|&c| c == b'\n').collect();
        if lines.last().is_some_and(|l| !l.ends_with(b"\n")) {
            lines.pop();
        }
        let (keep_events, keep_bytes) = (self.max_events / 2, self.max_bytes / 2);
        let mut kept = 0u64;
        let mut first = lines.len();
        while first > 0 && lines.len() - first < keep_events {
            let len = lines[first - 1].len() as u64;
            if kept + len > keep_bytes {
                break;
            }
            kept += len;
            first -= 1;
        }
        let out = lines[first..].concat();
        write_atomic(path, &out, 0o600)?;
        Ok(HistorySize {
            events: lines.len() - first,
            bytes: out.len() as u64,
        })
    }
}

#[async_trait::async_trait]
impl StateStore for FileStore {
    fn location(&self) -> String {
        self.state_path().display().to_string()
    }

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

    async fn save(&self, state: &PersistedState) -> Result<(), StoreError> {
        let path = self.state_path();
        let mut bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        bytes.push(b'\n');
        write_atomic(&path, &bytes, 0o600).map_err(|source| StoreError::Write { path, source })
    }

    async fn append_history(&self, event: &HistoryEvent) -> Result<(), StoreError> {
        let path = self.history_path();
        let mut size = self.history.lock().unwrap();
        let event_line = serde_json::to_vec(event).expect("event serialises");
        let write = |size: &mut Option<HistorySize>| -> io::Result<()> {
            let (mut now, torn) = match *size {
                Some(s) => (s, false),
                None => Self::measure(&path)?,
            };
            let mut line = Vec::with_capacity(event_line.len() + 2);
            if torn {
                // End the torn line so that this event is a line of its own.
                line.push(b'\n');
            }
            line.extend_from_slice(&event_line);
            line.push(b'\n');
            // Room first: past a limit, keep the newest half, then append. A rotation that
            // cannot be written leaves the file as it was and loses no event: the event is
            // appended anyway and the next append tries again.
            if now.events + 1 > self.max_events || now.bytes + line.len() as u64 > self.max_bytes {
                match self.rotate(&path) {
                    Ok(rotated) => now = rotated,
                    Err(e) => tracing::warn!(
                        "cannot rotate {}: {e}; the history keeps growing until it can",
                        path.display()
                    ),
                }
            }
            // Unknown until the append is known to have happened in full.
            *size = None;
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(&line)?;
            f.sync_data()?;
            *size = Some(HistorySize {
                events: now.events + 1,
                bytes: now.bytes + line.len() as u64,
            });
            Ok(())
        };
        write(&mut size).map_err(|source| StoreError::Write { path, source })
    }

    async fn history(&self, limit: usize) -> Result<Vec<HistoryEvent>, StoreError> {
        let path = self.history_path();
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(StoreError::Read { path, source }),
        };
        let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
        // The newest `limit` events, read from the end; a line torn by a crash mid-append is
        // skipped, not fatal.
        let mut events: Vec<HistoryEvent> = lines
            .iter()
            .rev()
            .filter_map(|l| serde_json::from_str(l).ok())
            .take(limit)
            .collect();
        events.reverse();
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
    // One temporary name per process: callers never write the same file from two tasks at
    // once (the commit lock; the certificate manager writes a host's files from one task).
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
fn rfc3339_now() -> String {
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
    use crate::core::release::ServiceRelease;

    #[tokio::test]
    async fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_000_000), "2026-11-18T11:06:40Z");
    }

    /// Pins the on-disk format: a state file written by this version must keep loading, and
    /// what we write must keep this shape.
    #[tokio::test]
    async fn state_file_format_is_pinned() {
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
        store.save(&expected).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap(),
            pinned
        );
    }

    #[tokio::test]
    async fn corrupt_or_unknown_state_is_an_error_naming_the_file() {
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

    #[tokio::test]
    async fn missing_state_is_none_and_history_appends() {
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
            store.append_history(&e).await.unwrap();
        }
        let h = store.history(2).await.unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[1].services, vec!["s4".to_string()]);
    }

    fn event(i: usize, detail: serde_json::Value) -> HistoryEvent {
        HistoryEvent::now("switch", vec![format!("s{i}")], "ok", detail)
    }

    fn file_events(dir: &Path) -> Vec<String> {
        std::fs::read_to_string(dir.join(HISTORY_FILE))
            .unwrap()
            .lines()
            .map(|l| {
                let e: HistoryEvent = serde_json::from_str(l).unwrap();
                e.services[0].clone()
            })
            .collect()
    }

    /// `s{from}` … `s{to}`.
    fn names(from: usize, to: usize) -> Vec<String> {
        (from..=to).map(|i| format!("s{i}")).collect()
    }

    #[tokio::test]
    async fn history_rotates_past_max_events_keeping_the_newest() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::with_history_limits(dir.path(), 10, 1 << 20);
        for i in 0..10 {
            store
                .append_history(&event(i, serde_json::Value::Null))
                .await
                .unwrap();
        }
        assert_eq!(
            file_events(dir.path()),
            names(0, 9),
            "not rotated at the limit"
        );
        // The 11th: rotated down to the newest 5, then appended.
        store
            .append_history(&event(10, serde_json::Value::Null))
            .await
            .unwrap();
        assert_eq!(file_events(dir.path()), names(5, 10));
        for i in 11..=24 {
            store
                .append_history(&event(i, serde_json::Value::Null))
                .await
                .unwrap();
            let kept = file_events(dir.path());
            assert!(kept.len() <= 10, "{} events after {i}", kept.len());
            assert_eq!(kept, names(i + 1 - kept.len(), i), "newest must be kept");
        }
        let h = store.history(3).await.unwrap();
        let got: Vec<&str> = h.iter().map(|e| e.services[0].as_str()).collect();
        assert_eq!(got, ["s22", "s23", "s24"], "newest 3, oldest first");
        // No temp file is left behind.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [HISTORY_FILE]);
    }

    #[tokio::test]
    async fn history_rotates_past_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::with_history_limits(dir.path(), 1000, 4000);
        let big = serde_json::json!({ "pad": "x".repeat(300) });
        for i in 0..100 {
            store.append_history(&event(i, big.clone())).await.unwrap();
            let len = std::fs::metadata(dir.path().join(HISTORY_FILE))
                .unwrap()
                .len();
            assert!(len <= 4000, "{len} bytes after event {i}");
        }
        let kept = file_events(dir.path());
        assert!(kept.len() >= 5, "{kept:?}");
        assert_eq!(kept, names(100 - kept.len(), 99));
    }

    #[tokio::test]
    async fn history_of_an_existing_file_is_measured_then_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::with_history_limits(dir.path(), 1000, 1 << 20);
        for i in 0..30 {
            store
                .append_history(&event(i, serde_json::Value::Null))
                .await
                .unwrap();
        }
        // A restart with a lower limit: the first append finds the file too long.
        let store = FileStore::with_history_limits(dir.path(), 20, 1 << 20);
        store
            .append_history(&event(30, serde_json::Value::Null))
            .await
            .unwrap();
        assert_eq!(file_events(dir.path()), names(20, 30));
    }

    #[tokio::test]
    async fn failed_rotation_leaves_the_file_and_loses_no_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::with_history_limits(dir.path(), 4, 1 << 20);
        for i in 0..4 {
            store
                .append_history(&event(i, serde_json::Value::Null))
                .await
                .unwrap();
        }
        // A directory where the rotation's temp file would go makes its write fail.
        let blocked = dir
            .path()
            .join(format!(".{HISTORY_FILE}.tmp.{}", std::process::id()));
        std::fs::create_dir(&blocked).unwrap();
        store
            .append_history(&event(4, serde_json::Value::Null))
            .await
            .unwrap();
        assert_eq!(
            file_events(dir.path()),
            names(0, 4),
            "old file plus the new event"
        );
        std::fs::remove_dir(&blocked).unwrap();
        store
            .append_history(&event(5, serde_json::Value::Null))
            .await
            .unwrap();
        assert_eq!(file_events(dir.path()), names(3, 5));
    }

    #[tokio::test]
    async fn history_skips_a_torn_line_and_appends_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::with_history_limits(dir.path(), 6, 1 << 20);
        for i in 0..3 {
            store
                .append_history(&event(i, serde_json::Value::Null))
                .await
                .unwrap();
        }
        let path = dir.path().join(HISTORY_FILE);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"time\":\"torn").unwrap();
        drop(f);
        let store = FileStore::with_history_limits(dir.path(), 6, 1 << 20);
        let h = store.history(10).await.unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(store.history(2).await.unwrap()[1].services, ["s2"]);
        for i in 3..6 {
            store
                .append_history(&event(i, serde_json::Value::Null))
                .await
                .unwrap();
        }
        let h: Vec<String> = store
            .history(100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.services[0].clone())
            .collect();
        // s3 is not glued to the torn line; the rotation kept the newest 3 lines, the torn
        // one among them, then appended s5.
        assert_eq!(h, names(3, 5));
    }

    #[tokio::test]
    async fn failed_write_leaves_the_old_file() {
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
