//! Hot reload of a folder of files (the mapping set): watch the folder, and when it changes, load
//! the whole set again and swap it in atomically — or refuse it and keep the previous one.
//!
//! Readers take one snapshot (`ArcSwap::load_full`) per unit of work, so a message is always
//! handled by exactly one complete set, never by a half-loaded one. Editors save in bursts (write a
//! temporary file, rename, touch), so changes are debounced: the set is loaded once the folder has
//! been quiet for [`QUIET`]. A set caught half-written fails its checks, is refused, and the next
//! burst's load picks up the finished files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the folder must be quiet before a reload.
pub const QUIET: Duration = Duration::from_millis(250);

/// What the watcher needs to know about the thing it reloads.
pub trait Reloadable: Send + Sync + Sized + 'static {
    /// Loads and checks the whole set; every problem as one line each on failure.
    fn load(dir: &Path) -> Result<Self, Vec<String>>;
    /// A content version (hash), logged and compared so that a touch without a change is quiet.
    fn version(&self) -> &str;
}

/// Publishes the active version as the `ferry_mappings_active{version}` gauge (1 for the active
/// set, 0 for the one it replaced), so dashboards see which set mapped what.
pub fn announce(previous: Option<&str>, active: &str) {
    if let Some(previous) = previous {
        metrics::gauge!("ferry_mappings_active", "version" => previous.to_owned()).set(0.0);
    }
    metrics::gauge!("ferry_mappings_active", "version" => active.to_owned()).set(1.0);
}

impl Reloadable for crate::mapping::MappingSet {
    fn load(dir: &Path) -> Result<Self, Vec<String>> {
        crate::mapping::MappingSet::load(dir)
            .map_err(|problems| problems.iter().map(ToString::to_string).collect())
    }

    fn version(&self) -> &str {
        crate::mapping::MappingSet::version(self)
    }
}

/// Starts watching `dir`; changes reload into `target`. The task ends when `shutdown` is cancelled.
pub fn watch<T: Reloadable>(
    dir: PathBuf,
    target: Arc<ArcSwap<T>>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, notify::Error> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Access events (reads of the files, including our own loads) change nothing.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    Ok(tokio::spawn(async move {
        // The watcher lives as long as the task; dropping it stops the notifications.
        let _watcher = watcher;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = rx.recv() => if got.is_none() { return },
            }
            // Debounce: wait until nothing has changed for QUIET.
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = rx.recv() => if got.is_none() { return },
                    _ = tokio::time::sleep(QUIET) => break,
                }
            }
            reload(&dir, &target).await;
        }
    }))
}

/// Loads the set once and swaps it in if it is valid and different. Returns true when swapped.
pub async fn reload<T: Reloadable>(dir: &Path, target: &ArcSwap<T>) -> bool {
    let load_dir = dir.to_owned();
    let loaded = tokio::task::spawn_blocking(move || T::load(&load_dir)).await;
    let dir = dir.display();
    match loaded {
        Ok(Ok(set)) => {
            let previous = target.load();
            if set.version() == previous.version() {
                tracing::debug!(%dir, version = set.version(), "Mappings unchanged.");
                return false;
            }
            tracing::info!(%dir, version = set.version(), previous = previous.version(), "Mappings reloaded and active.");
            announce(Some(previous.version()), set.version());
            target.store(Arc::new(set));
            metrics::counter!("ferry_mapping_reloads_total", "result" => "applied").increment(1);
            true
        }
        Ok(Err(problems)) => {
            for problem in &problems {
                tracing::error!(%problem, "Mapping problem.");
            }
            tracing::error!(
                %dir,
                problems = problems.len(),
                active = target.load().version(),
                "Changed mappings refused; the previous set stays active."
            );
            metrics::counter!("ferry_mapping_reloads_total", "result" => "refused").increment(1);
            false
        }
        Err(error) => {
            tracing::error!(%error, "Mapping reload task failed; the previous set stays active.");
            false
        }
    }
}
