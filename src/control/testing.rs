//! Test fixtures: a controller over an in-memory store, with its config read from a file so
//! that a reload can change it. No socket is opened: smoke checks against the fixture's
//! backends (closed ports) fail.

use std::path::PathBuf;
use std::sync::Arc;

use super::Controller;
use crate::persist::memory::MemoryStore;

/// A releasable `web` with smoke checks, and `static` with one pool. Nothing listens on the
/// backends' ports.
pub(crate) const CONFIG: &str = r#"
[listen]
http = "127.0.0.1:18080"

[[route]]
host = "web.test"
service = "web"

[[route]]
host = "static.test"
service = "static"

[service.web]
blue = ["127.0.0.1:1"]
green = ["127.0.0.1:2"]
smoke = [{ path = "/health", expect_status = 200, timeout_ms = 2000 }]

[service.static]
backends = ["127.0.0.1:3"]
"#;

pub(crate) struct Fixture {
    pub controller: Arc<Controller>,
    pub store: MemoryStore,
    pub config_path: PathBuf,
    /// Holds the config file.
    pub _dir: tempfile::TempDir,
}

impl Fixture {
    /// A controller on [`CONFIG`] and an empty store.
    pub(crate) fn new() -> Fixture {
        Self::with(CONFIG, MemoryStore::default())
    }

    pub(crate) fn with(config: &str, store: MemoryStore) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("switchyard.toml");
        std::fs::write(&config_path, config).unwrap();
        let config =
            crate::persist::config_files::load(&config_path).unwrap_or_else(|e| panic!("{e}"));
        let controller = Controller::with_store(config, Arc::new(store.clone())).unwrap();
        Fixture {
            controller,
            store,
            config_path,
            _dir: dir,
        }
    }

    /// Rewrites the config file (for the next reload).
    pub(crate) fn write_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).unwrap();
    }
}
