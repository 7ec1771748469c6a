//! A near deadline kept registered on each thread that serves connections, so that tokio's
//! timer driver does not wake its own thread for every request.
//!
//! tokio's time driver writes its eventfd (a syscall, and one more return of the next
//! `epoll_wait`) whenever a timer is registered with a deadline earlier than the one it last
//! planned to wake at — even from its own thread, which is awake already. On a keep-alive
//! proxy that was every request: the upstream read's deadline (`read_timeout` from now) is
//! earlier than the idle deadlines (`idle_timeout`) the other connections wait on. strace
//! counted 5,011 such writes for 5,000 requests; nginx makes none.
//!
//! With a sleep re-armed every `FLOOR` on the thread, the driver always plans to wake within
//! `FLOOR`, and a request's deadline (a second or more away) is never the earliest. It runs
//! while the thread holds connections, so a server without any does not wake for it.

use std::cell::Cell;
use std::time::Duration;

/// How far away the floor's deadline is at most: below every per-request timeout a config
/// normally sets (a shorter one only costs the wake-up this saves).
const FLOOR: Duration = Duration::from_millis(500);

thread_local! {
    /// Connections this thread serves now.
    static HELD: Cell<usize> = const { Cell::new(0) };
    /// The floor's task runs on this thread.
    static RUNNING: Cell<bool> = const { Cell::new(false) };
}

/// Held by a connection's task for its life: the floor runs on the task's thread while any
/// connection there holds one. Taken inside the thread's runtime, by a task that stays on its
/// thread (pingora's runtimes with `work_stealing = false`, as `server::run` sets them).
pub struct Hold(());

pub fn hold() -> Hold {
    HELD.with(|held| held.set(held.get() + 1));
    if !RUNNING.with(|running| running.replace(true)) {
        tokio::spawn(floor());
    }
    Hold(())
}

impl Drop for Hold {
    fn drop(&mut self) {
        HELD.with(|held| held.set(held.get().saturating_sub(1)));
    }
}

async fn floor() {
    loop {
        tokio::time::sleep(FLOOR).await;
        if HELD.with(Cell::get) == 0 {
            RUNNING.with(|running| running.set(false));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> bool {
        RUNNING.with(Cell::get)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn runs_while_a_connection_holds_it_and_stops_after() {
        assert!(!running());
        let first = hold();
        let second = hold();
        assert!(running(), "the first hold starts the floor");
        drop(first);
        // Two floors' time with a connection still held: it keeps running.
        tokio::time::sleep(FLOOR * 2 + Duration::from_millis(100)).await;
        assert!(running());
        drop(second);
        let stopped = async {
            while running() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(FLOOR * 10, stopped)
            .await
            .expect("the floor stops once no connection holds it");
        let again = hold();
        assert!(running(), "and starts again with the next connection");
        drop(again);
    }
}
