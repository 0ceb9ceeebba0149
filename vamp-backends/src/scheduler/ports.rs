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

/// Where the port reservations of every local scheduler on this machine are locked.
fn port_lock_dir() -> PathBuf {
    std::env::temp_dir().join("vamp-local-ports")
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
        let dir = port_lock_dir();
        if std::fs::create_dir_all(&dir).is_err() {
            return Some(None);
        }
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

    pub(crate) fn release(&mut self, port: u16) {
        // Dropping the file releases its lock.
        self.held.remove(&port);
    }
}
