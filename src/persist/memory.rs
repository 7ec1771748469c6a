//! An in-memory [`StateStore`] for tests: clones share one store, so a test keeps a handle
//! to look at what the controller saved, and can make writes fail.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::store::{PersistedState, StateStore, StoreError};
use crate::api::HistoryEvent;

#[derive(Clone, Default)]
pub struct MemoryStore(Arc<Memory>);

#[derive(Default)]
struct Memory {
    state: Mutex<Option<PersistedState>>,
    history: Mutex<Vec<HistoryEvent>>,
    fail_writes: AtomicBool,
    saves: Mutex<usize>,
}

impl MemoryStore {
    /// A store that already holds `state`, as after an earlier run.
    pub fn with_state(state: PersistedState) -> MemoryStore {
        let store = MemoryStore::default();
        *store.0.state.lock().unwrap() = Some(state);
        store
    }

    /// From now on, every save and history append fails (a full disk) or succeeds again.
    pub fn fail_writes(&self, fail: bool) {
        self.0.fail_writes.store(fail, Ordering::SeqCst);
    }

    /// The last state saved (or given), if any.
    pub fn state(&self) -> Option<PersistedState> {
        self.0.state.lock().unwrap().clone()
    }

    /// How many saves succeeded.
    pub fn saves(&self) -> usize {
        *self.0.saves.lock().unwrap()
    }

    /// Every event recorded, oldest first.
    pub fn events(&self) -> Vec<HistoryEvent> {
        self.0.history.lock().unwrap().clone()
    }

    fn check_write(&self) -> Result<(), StoreError> {
        if self.0.fail_writes.load(Ordering::SeqCst) {
            return Err(StoreError::Write {
                path: PathBuf::from(self.location()),
                source: io::Error::new(io::ErrorKind::StorageFull, "no space left on device"),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl StateStore for MemoryStore {
    fn location(&self) -> String {
        "memory".to_string()
    }

    fn load(&self) -> Result<Option<PersistedState>, StoreError> {
        Ok(self.state())
    }

    async fn save(&self, state: &PersistedState) -> Result<(), StoreError> {
        self.check_write()?;
        *self.0.state.lock().unwrap() = Some(state.clone());
        *self.0.saves.lock().unwrap() += 1;
        Ok(())
    }

    async fn append_history(&self, event: &HistoryEvent) -> Result<(), StoreError> {
        self.check_write()?;
        self.0.history.lock().unwrap().push(event.clone());
        Ok(())
    }

    async fn history(&self, limit: usize) -> Result<Vec<HistoryEvent>, StoreError> {
        let h = self.0.history.lock().unwrap();
        Ok(h[h.len().saturating_sub(limit)..].to_vec())
    }
}
