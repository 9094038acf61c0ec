//! `file://` state: `<dir>/<state_id>/state.json`, as Meltano's local
//! filesystem state backend lays it out.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use futures::FutureExt;
use futures::future::BoxFuture;

use super::{StateBackend, StateDocument, StateError};

pub struct FileBackend {
    dir: PathBuf,
    /// Held (with an OS lock) for the backend's lifetime; the OS releases it
    /// when the process dies, so a killed run never leaves a stale lock.
    _lock: File,
}

impl FileBackend {
    pub fn open(root: &Path, state_id: &str) -> Result<Self, StateError> {
        let dir = root.join(state_id);
        let io = |e: std::io::Error| StateError::Io {
            location: dir.display().to_string(),
            reason: e.to_string(),
        };
        fs::create_dir_all(&dir).map_err(io)?;
        // Not Meltano's `lock` file: Meltano treats that one's presence as a lock.
        let lock_path = dir.join(".lfx-sync.lock");
        let mut lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&lock_path).unwrap_or_default();
                return Err(StateError::Locked {
                    id: state_id.to_string(),
                    holder: if holder.trim().is_empty() {
                        "unknown process".to_string()
                    } else {
                        holder.trim().to_string()
                    },
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        lock.set_len(0).map_err(io)?;
        let _ = write!(lock, "pid {}", std::process::id());
        Ok(Self { dir, _lock: lock })
    }

    fn path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn io_error(&self, e: std::io::Error) -> StateError {
        StateError::Io {
            location: self.path().display().to_string(),
            reason: e.to_string(),
        }
    }
}

impl StateBackend for FileBackend {
    fn location(&self) -> String {
        format!("file://{}", self.path().display())
    }

    fn load(&self) -> BoxFuture<'_, Result<Option<StateDocument>, StateError>> {
        async move {
            let text = match fs::read(self.path()) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.io_error(e)),
            };
            let corrupt = |reason: String| StateError::Corrupt {
                location: self.location(),
                reason,
            };
            let value = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
            StateDocument::from_json(value).map(Some).map_err(corrupt)
        }
        .boxed()
    }

    fn store<'a>(&'a self, doc: &'a StateDocument) -> BoxFuture<'a, Result<(), StateError>> {
        async move {
            let tmp = self
                .dir
                .join(format!(".state.json.{}.tmp", std::process::id()));
            let text = serde_json::to_vec(&doc.to_json()).map_err(|e| StateError::Io {
                location: self.location(),
                reason: e.to_string(),
            })?;
            let write = || -> std::io::Result<()> {
                let mut f = File::create(&tmp)?;
                f.write_all(&text)?;
                f.sync_all()?;
                fs::rename(&tmp, self.path())?;
                File::open(&self.dir)?.sync_all()
            };
            write().map_err(|e| self.io_error(e))
        }
        .boxed()
    }

    fn clear(&self) -> BoxFuture<'_, Result<(), StateError>> {
        async move {
            match fs::remove_file(self.path()) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(self.io_error(e)),
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn stores_atomically_and_locks_the_state_id() {
        let root = tempfile::tempdir().unwrap();
        let backend = FileBackend::open(root.path(), "demo").unwrap();
        assert_eq!(backend.load().await.unwrap(), None);
        let mut doc = StateDocument::default();
        doc.completed
            .set_bookmark("s", "ts", json!("2024-01-01T00:00:00.000000+00:00"));
        backend.store(&doc).await.unwrap();
        assert_eq!(backend.load().await.unwrap(), Some(doc.clone()));
        let on_disk: serde_json::Value =
            serde_json::from_slice(&fs::read(root.path().join("demo/state.json")).unwrap())
                .unwrap();
        assert_eq!(on_disk["partial"], json!({}));
        assert!(on_disk["completed"]["singer_state"]["bookmarks"]["s"].is_object());

        assert!(matches!(
            FileBackend::open(root.path(), "demo"),
            Err(StateError::Locked { .. })
        ));
        drop(backend);
        assert!(FileBackend::open(root.path(), "demo").is_ok());
    }
}
