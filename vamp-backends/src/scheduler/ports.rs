//! The ports a scheduler hands to instances that share the machine's network (local
//! processes, Docker containers on the host network).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;

/// The ports instances get by default: below the gateways' default range (24000–29999, see
/// `vamp_core::ops::deploy::MergeOptions`) and Linux's default ephemeral range (32768–60999),
/// so neither a gateway nor another process's outgoing connection is given one of them.
pub const DEFAULT_PORT_RANGE: RangeInclusive<u16> = 20000..=23999;

/// Hands out the ports of the scheduler's range: each to one instance at a time, and only
/// while nothing else listens on it. Every scheduler on the machine shares the reservation:
/// a port given out is locked (`flock`) in [`port_lock_dir`] until it is given back, so two
/// schedulers (two control planes, parallel tests) never hand out the same port while its
/// instance has yet to bind it.
pub(crate) struct PortAllocator {
    range: RangeInclusive<u16>,
    next: u16,
    held: BTreeMap<u16, Option<std::fs::File>>,
}

/// Where the port reservations of this user's local schedulers are locked:
/// `$TMPDIR/vamp-local-ports-<uid>`, created `0700`, and used only while it is a directory
/// (not a link) of this user that nobody else may read or write; otherwise `None` (each
/// scheduler then counts only its own ports).
fn port_lock_dir() -> Option<PathBuf> {
    static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let uid = std::fs::metadata("/proc/self").ok()?.uid();
        private_dir(&std::env::temp_dir(), uid)
    })
    .clone()
}

/// `base/vamp-local-ports-<uid>`, created `0700` if missing, if it is a directory (not a
/// link) owned by `uid` with no access for group or others.
fn private_dir(base: &std::path::Path, uid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = base.join(format!("vamp-local-ports-{uid}"));
    // Created by us, or already there (made by another scheduler, or by someone else: then
    // checked below).
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    let m = std::fs::symlink_metadata(&dir).ok()?;
    (m.file_type().is_dir() && m.uid() == uid && m.mode() & 0o077 == 0).then_some(dir)
}

impl PortAllocator {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        Self {
            next: *range.start(),
            range,
            held: BTreeMap::new(),
        }
    }

    /// Locks `port` for this scheduler: `None` when another holds it; `Some(None)` when
    /// locks cannot be taken here (then only this scheduler's own bookkeeping counts).
    fn reserve(port: u16) -> Option<Option<std::fs::File>> {
        let Some(dir) = port_lock_dir() else {
            return Some(None);
        };
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{port}.lock")))
        else {
            return Some(None);
        };
        match file.try_lock() {
            Ok(()) => Some(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => None,
            Err(std::fs::TryLockError::Error(_)) => Some(None),
        }
    }

    pub(crate) fn allocate(&mut self) -> Option<u16> {
        let (start, end) = (*self.range.start(), *self.range.end());
        let len = u32::from(end.checked_sub(start)?) + 1;
        for _ in 0..len {
            let port = self.next;
            self.next = if port >= end { start } else { port + 1 };
            if self.held.contains_key(&port) {
                continue;
            }
            let Some(lock) = Self::reserve(port) else {
                continue;
            };
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                self.held.insert(port, lock);
                return Some(port);
            }
        }
        None
    }

    /// Holds `port` for an instance adopted from an earlier scheduler (it listens on the
    /// port already, so no bind is tried).
    #[cfg_attr(not(feature = "scheduler-local"), allow(dead_code))]
    pub(crate) fn adopt(&mut self, port: u16) {
        let lock = Self::reserve(port).unwrap_or(None);
        self.held.insert(port, lock);
    }

    pub(crate) fn release(&mut self, port: u16) {
        // Dropping the file releases its lock.
        self.held.remove(&port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    #[test]
    fn the_lock_directory_is_private_or_not_used() {
        let base = tempfile::tempdir().unwrap();
        let uid = std::fs::metadata("/proc/self").unwrap().uid();
        let dir = private_dir(base.path(), uid).expect("created");
        let m = std::fs::metadata(&dir).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o700);
        assert_eq!(
            private_dir(base.path(), uid),
            Some(dir.clone()),
            "used again"
        );
        // Opened to others: not used.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(private_dir(base.path(), uid), None);
        // Another user's: not used.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(private_dir(base.path(), uid.wrapping_add(1)), None);
        // A link planted in its place: not followed.
        let other = tempfile::tempdir().unwrap();
        let linked = base.path().join("links");
        std::fs::create_dir(&linked).unwrap();
        std::os::unix::fs::symlink(other.path(), linked.join(format!("vamp-local-ports-{uid}")))
            .unwrap();
        assert_eq!(private_dir(&linked, uid), None);
    }
}
