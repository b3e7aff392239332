//! One service per data directory: an exclusive lock on `DATA_DIR/paliforge.lock`, held while
//! the process lives (the OS releases it when the process dies, even by kill -9), so two
//! services never run the same jobs.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::Path;

use crate::error::{Result, ServiceError};

pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock> {
        let path = data_dir.join("paliforge.lock");
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ServiceError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(ServiceError::DataDir {
                    path: data_dir.to_path_buf(),
                    message: "another paliforge service is using it (paliforge.lock is held)"
                        .into(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(ServiceError::io(&path, e)),
        }
        // For whoever looks: which process holds it.
        let _ = file.set_len(0);
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let second = DataDirLock::acquire(dir.path());
        assert!(matches!(second, Err(ServiceError::DataDir { .. })));
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
