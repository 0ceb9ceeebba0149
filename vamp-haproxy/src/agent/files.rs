//! The agent's files, written as a root process must write them: in directories only the agent
//! can change, never through a symbolic link, and read back before HAProxy is told to use them.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::AgentError;

fn io(path: &Path, message: impl Into<String>) -> AgentError {
    AgentError::Io {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// The agent's effective user.
pub(crate) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Makes sure `dir` is a directory owned by the agent that nobody else can write (and, when
/// `private`, nobody else can read or enter: mode 0700). A missing directory is created with
/// mode 0700 (its missing parents 0755); an existing one that is a symbolic link, owned by
/// someone else or open to others is refused, never repaired.
pub(crate) fn ensure_dir(dir: &Path, private: bool) -> Result<(), AgentError> {
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(parent)
                    .map_err(|e| io(parent, e.to_string()))?;
            }
            match DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Created meanwhile by someone else: checked below like any existing one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io(dir, e.to_string())),
            }
            check_dir(dir, private)
        }
        Err(e) => Err(io(dir, e.to_string())),
        Ok(_) => check_dir(dir, private),
    }
}

fn check_dir(dir: &Path, private: bool) -> Result<(), AgentError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io(dir, e.to_string()))?;
    if meta.file_type().is_symlink() {
        return Err(io(
            dir,
            "is a symbolic link; the agent needs a real directory",
        ));
    }
    if !meta.is_dir() {
        return Err(io(dir, "is not a directory"));
    }
    let me = euid();
    if meta.uid() != me {
        return Err(io(
            dir,
            format!(
                "is owned by uid {}, not by the agent (uid {me}); refusing to use it",
                meta.uid()
            ),
        ));
    }
    let open = if private { 0o077 } else { 0o022 };
    if meta.mode() & open != 0 {
        return Err(io(
            dir,
            format!(
                "has mode {:o}; the agent needs it {} (chmod {})",
                meta.mode() & 0o7777,
                if private {
                    "private to its owner"
                } else {
                    "writable by its owner only"
                },
                if private { "700" } else { "go-w" }
            ),
        ));
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path` (mode 0600), replacing whatever was there without
/// following it if it was a link.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path, e.to_string())),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| io(path, e.to_string()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| io(path, e.to_string()))
}

/// Reads a file without following a link.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, AgentError> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .map_err(|e| io(path, e.to_string()))?;
    let mut out = Vec::new();
    file.read_to_end(&mut out)
        .map_err(|e| io(path, e.to_string()))?;
    Ok(out)
}

/// Moves the validated candidate over the configuration file (atomic: one directory) and
/// checks that the file now holds exactly the validated bytes.
pub(crate) fn install(candidate: &Path, config: &Path, validated: &[u8]) -> Result<(), AgentError> {
    std::fs::rename(candidate, config).map_err(|e| io(config, format!("cannot install: {e}")))?;
    if read(config)? != validated {
        return Err(io(
            config,
            "changed between validation and installation; not applied",
        ));
    }
    Ok(())
}

/// `<path>.candidate`.
pub(crate) fn candidate_of(config: &Path) -> PathBuf {
    let mut name = config.as_os_str().to_owned();
    name.push(".candidate");
    PathBuf::from(name)
}

/// 32 hex characters from the kernel's random source.
pub(crate) fn random_token() -> Result<String, AgentError> {
    let path = Path::new("/dev/urandom");
    let mut bytes = [0u8; 16];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| io(path, e.to_string()))?;
    Ok(vamp_core::lookup::hex(&bytes))
}
