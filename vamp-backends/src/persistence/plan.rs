//! The write planner every SQL store shares (sqlx's PostgreSQL, MySQL and SQLite, and
//! tiberius' SQL Server): state in, statements out. Given the head version and the current
//! rows of the artifacts a batch touches, it checks every condition (create, update at a
//! version, delete at a version), hands out versions in order and returns the row operations to
//! run. The executors run them inside the transaction that read the state, and turn a row
//! operation that affects no row into the error the planner attached to it, so the database
//! still enforces the conditions should another writer have bypassed the version lock.

use std::collections::HashMap;

use vamp_core::Error;
use vamp_core::kv::{PutMode, Version};
use vamp_core::model::ArtifactKind;
use vamp_core::persistence::{ArtifactWrite, WriteOp, validate_name};

use crate::invalid;

/// The longest artifact name a SQL store accepts (its key column is `VARCHAR(255)`).
pub const MAX_NAME_CHARS: usize = 255;

/// Checks every name of a batch before anything is written.
pub(crate) fn check_names(writes: &[ArtifactWrite]) -> Result<(), Error> {
    for w in writes {
        validate_name(&w.name)?;
        if w.name.chars().count() > MAX_NAME_CHARS {
            return Err(Error::Invalid {
                what: "artifact name",
                value: w.name.chars().take(64).collect(),
                reason: format!(
                    "longer than {MAX_NAME_CHARS} characters, the most a SQL store keeps"
                ),
            });
        }
    }
    Ok(())
}

/// Checks a base table name: it is spliced into SQL text, so only `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn check_table(table: &str) -> Result<(), Error> {
    let ok = !table.is_empty()
        && table.len() <= 48
        && table
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "table",
            format!(
                "'{table}' is not a valid table name ([A-Za-z_][A-Za-z0-9_]*, at most 48 characters)"
            ),
        ))
    }
}

/// The stored row of an artifact: its version and JSON text.
pub(crate) type Row = (i64, String);

/// One row operation, in the order to run them.
#[derive(Debug)]
pub(crate) enum Action {
    /// Append to the log (`content: None` records a deletion).
    Log {
        version: i64,
        kind: &'static str,
        name: String,
        content: Option<String>,
    },
    /// Insert the current row; `miss` when the key already exists.
    Insert {
        version: i64,
        kind: &'static str,
        name: String,
        content: String,
        miss: Error,
    },
    /// Update the current row at `expected`; `miss` when no row is at that version.
    Update {
        version: i64,
        kind: &'static str,
        name: String,
        content: String,
        expected: i64,
        miss: Error,
    },
    /// Delete the current row at `expected`; `miss` when no row is at that version.
    Delete {
        kind: &'static str,
        name: String,
        expected: i64,
        miss: Error,
    },
}

/// What a batch does.
#[derive(Debug)]
pub(crate) struct Plan {
    pub actions: Vec<Action>,
    pub results: Vec<Option<Version>>,
    /// The new head version (unchanged when nothing is written).
    pub head: i64,
}

/// Plans `writes` against `current` (the stored row of every artifact the batch names, `None`
/// when absent) and `head`, the last version handed out.
pub(crate) fn plan(
    label: &str,
    head: i64,
    mut current: HashMap<(ArtifactKind, String), Option<Row>>,
    writes: Vec<ArtifactWrite>,
) -> Result<Plan, Error> {
    let mut next = head;
    let mut actions = Vec::new();
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        let kind = w.kind.as_str();
        let key = format!("{}/{}", w.kind, w.name);
        let row = current.get(&(w.kind, w.name.clone())).cloned().flatten();
        let found = row.as_ref().map(|r| r.0 as u64);
        let conflict = |expected: u64| Error::Conflict {
            backend: label.to_owned(),
            key: key.clone(),
            expected,
            found,
        };
        match w.op {
            WriteOp::Put { content, mode } => {
                match mode {
                    PutMode::Create if row.is_some() => {
                        return Err(Error::AlreadyExists {
                            backend: label.to_owned(),
                            key,
                        });
                    }
                    PutMode::Update(expected) if found != Some(expected.0) => {
                        return Err(conflict(expected.0));
                    }
                    _ => {}
                }
                // Writing the same content again is not a change: same version, no log entry.
                if let Some((v, c)) = &row
                    && serde_json::from_str::<serde_json::Value>(c).is_ok_and(|c| c == content)
                {
                    results.push(Some(Version(*v as u64)));
                    continue;
                }
                next += 1;
                let text = content.to_string();
                actions.push(Action::Log {
                    version: next,
                    kind,
                    name: w.name.clone(),
                    content: Some(text.clone()),
                });
                let miss = match mode {
                    PutMode::Create => Error::AlreadyExists {
                        backend: label.to_owned(),
                        key: key.clone(),
                    },
                    PutMode::Update(expected) => conflict(expected.0),
                    _ => conflict(found.unwrap_or(0)),
                };
                actions.push(match &row {
                    None => Action::Insert {
                        version: next,
                        kind,
                        name: w.name.clone(),
                        content: text.clone(),
                        miss,
                    },
                    Some((v, _)) => Action::Update {
                        version: next,
                        kind,
                        name: w.name.clone(),
                        content: text.clone(),
                        expected: *v,
                        miss,
                    },
                });
                current.insert((w.kind, w.name), Some((next, text)));
                results.push(Some(Version(next as u64)));
            }
            WriteOp::Delete { expected } => {
                if let Some(expected) = expected
                    && found != Some(expected.0)
                {
                    return Err(conflict(expected.0));
                }
                let Some((v, _)) = row else {
                    results.push(None);
                    continue;
                };
                next += 1;
                actions.push(Action::Log {
                    version: next,
                    kind,
                    name: w.name.clone(),
                    content: None,
                });
                actions.push(Action::Delete {
                    kind,
                    name: w.name.clone(),
                    expected: v,
                    miss: conflict(expected.map_or(v as u64, |e| e.0)),
                });
                current.insert((w.kind, w.name), None);
                results.push(Some(Version(next as u64)));
            }
            // Read under the version row's lock, which every writer takes: no write can
            // change the artifact before the batch commits.
            WriteOp::Check { expected } => {
                if found != expected.map(|v| v.0) {
                    return Err(conflict(expected.map_or(0, |v| v.0)));
                }
                results.push(found.map(Version));
            }
            _ => {
                return Err(Error::Invalid {
                    what: "artifact write",
                    value: key,
                    reason: "this write operation is not supported by the SQL store".into(),
                });
            }
        }
    }
    Ok(Plan {
        actions,
        results,
        head: next,
    })
}

/// One log entry to append.
#[derive(Debug)]
pub(crate) struct LogRow {
    pub version: i64,
    pub kind: &'static str,
    pub name: String,
    pub content: Option<String>,
}

/// A current row to remove at the version it had when the batch read it.
#[derive(Debug)]
pub(crate) struct Removal {
    pub kind: &'static str,
    pub name: String,
    pub expected: i64,
    pub miss: Error,
}

/// A current row to add: the batch's last write of that artifact.
#[derive(Debug)]
pub(crate) struct NewRow {
    pub version: i64,
    pub kind: &'static str,
    pub name: String,
    pub content: String,
    pub miss: Error,
}

/// A plan's net effect, for executors that write a batch in a few statements instead of one
/// per action: every log entry, then the current rows to remove (the updated and deleted
/// ones, each at its version before the batch), then the rows to add (the inserted and
/// updated ones, each with the batch's last content). An artifact the batch writes twice
/// appears once in `removals` and once in `rows` at most.
#[derive(Debug, Default)]
pub(crate) struct Net {
    pub logs: Vec<LogRow>,
    pub removals: Vec<Removal>,
    pub rows: Vec<NewRow>,
}

impl Plan {
    /// The plan's net effect on the log and the current table (see [`Net`]).
    pub(crate) fn net(self) -> Net {
        // Per artifact, in the order the batch first touches it: the removal of the row it
        // had before the batch (its first action was an update or a delete), and its last
        // row (None when the batch ends with a delete).
        struct Touch {
            removal: Option<(i64, Error)>,
            last: Option<(i64, String)>,
            miss: Option<Error>,
        }
        let mut net = Net::default();
        let mut order: Vec<(&'static str, String)> = Vec::new();
        let mut touched: HashMap<(&'static str, String), Touch> = HashMap::new();
        for action in self.actions {
            // The artifact, how this action treats the row before it (a removal at the
            // version read, or an insert's miss), and its row after it.
            let (kind, name, before, after) = match action {
                Action::Log {
                    version,
                    kind,
                    name,
                    content,
                } => {
                    net.logs.push(LogRow {
                        version,
                        kind,
                        name,
                        content,
                    });
                    continue;
                }
                Action::Insert {
                    version,
                    kind,
                    name,
                    content,
                    miss,
                } => (kind, name, Err(miss), Some((version, content))),
                Action::Update {
                    version,
                    kind,
                    name,
                    content,
                    expected,
                    miss,
                } => (kind, name, Ok((expected, miss)), Some((version, content))),
                Action::Delete {
                    kind,
                    name,
                    expected,
                    miss,
                } => (kind, name, Ok((expected, miss)), None),
            };
            match touched.entry((kind, name)) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    let t = e.get_mut();
                    t.last = after;
                    if let Err(miss) = before {
                        t.miss.get_or_insert(miss);
                    }
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    order.push(e.key().clone());
                    let (removal, miss) = match before {
                        Ok(removal) => (Some(removal), None),
                        Err(miss) => (None, Some(miss)),
                    };
                    e.insert(Touch {
                        removal,
                        last: after,
                        miss,
                    });
                }
            }
        }
        for (kind, name) in order {
            let Some(t) = touched.remove(&(kind, name.clone())) else {
                continue;
            };
            let mut row_miss = t.miss;
            if let Some((expected, miss)) = t.removal {
                if t.last.is_some() && row_miss.is_none() {
                    // The row re-added after its removal can only collide with a writer
                    // that bypassed the version lock: report the removal's error then.
                    row_miss = Some(copy_miss(&miss));
                }
                net.removals.push(Removal {
                    kind,
                    name: name.clone(),
                    expected,
                    miss,
                });
            }
            if let (Some((version, content)), Some(miss)) = (t.last, row_miss) {
                net.rows.push(NewRow {
                    version,
                    kind,
                    name,
                    content,
                    miss,
                });
            }
        }
        net
    }
}

/// `items` in runs of at most [`MAX_ROWS`] rows and, past the first row, at most
/// [`MAX_BYTES`] of `size` (so a batched statement stays within MySQL's packet limit).
pub(crate) fn chunks<T>(items: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, item) in items.iter().enumerate() {
        let n = size(item);
        if i > start && (i - start == MAX_ROWS || bytes + n > MAX_BYTES) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += n;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// The most rows a batched statement names.
pub(crate) const MAX_ROWS: usize = 500;

/// The most content bytes a batched statement carries (past its first row): MariaDB's
/// default `max_allowed_packet` is 16 MiB.
pub(crate) const MAX_BYTES: usize = 4 << 20;

/// A copy of a planned miss (the error types the planner attaches).
pub(crate) fn copy_miss(e: &Error) -> Error {
    match e {
        Error::Conflict {
            backend,
            key,
            expected,
            found,
        } => Error::Conflict {
            backend: backend.clone(),
            key: key.clone(),
            expected: *expected,
            found: *found,
        },
        Error::AlreadyExists { backend, key } => Error::AlreadyExists {
            backend: backend.clone(),
            key: key.clone(),
        },
        other => Error::Backend {
            backend: String::new(),
            source: other.to_string().into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn state(
        rows: &[(&str, i64, serde_json::Value)],
    ) -> HashMap<(ArtifactKind, String), Option<Row>> {
        rows.iter()
            .map(|(n, v, c)| {
                (
                    (ArtifactKind::Breed, (*n).to_owned()),
                    Some((*v, c.to_string())),
                )
            })
            .collect()
    }

    #[test]
    fn a_batch_sees_its_own_earlier_writes() {
        let writes = vec![
            ArtifactWrite::put(ArtifactKind::Breed, "a", json!({"v": 1}), PutMode::Create),
            ArtifactWrite::put(
                ArtifactKind::Breed,
                "a",
                json!({"v": 2}),
                PutMode::Update(Version(11)),
            ),
            ArtifactWrite::delete(ArtifactKind::Breed, "a", Some(Version(12))),
            ArtifactWrite::delete(ArtifactKind::Breed, "a", None),
        ];
        let mut current = state(&[]);
        current.insert((ArtifactKind::Breed, "a".into()), None);
        let plan = plan("t", 10, current, writes).unwrap();
        assert_eq!(
            plan.results,
            vec![
                Some(Version(11)),
                Some(Version(12)),
                Some(Version(13)),
                None
            ]
        );
        assert_eq!(plan.head, 13);
        let shape: Vec<String> = plan
            .actions
            .iter()
            .map(|a| match a {
                Action::Log {
                    version, content, ..
                } => format!("log {version} {}", content.is_some()),
                Action::Insert { version, .. } => format!("insert {version}"),
                Action::Update {
                    version, expected, ..
                } => format!("update {expected}->{version}"),
                Action::Delete { expected, .. } => format!("delete {expected}"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "log 11 true",
                "insert 11",
                "log 12 true",
                "update 11->12",
                "log 13 false",
                "delete 12"
            ]
        );
    }

    #[test]
    fn conditions_fail_the_whole_batch() {
        let current = state(&[("a", 5, json!({"v": 1}))]);
        let create = vec![
            ArtifactWrite::put(ArtifactKind::Breed, "b", json!({}), PutMode::Overwrite),
            ArtifactWrite::put(ArtifactKind::Breed, "a", json!({}), PutMode::Create),
        ];
        let mut with_b = current.clone();
        with_b.insert((ArtifactKind::Breed, "b".into()), None);
        assert!(matches!(
            plan("t", 5, with_b.clone(), create),
            Err(Error::AlreadyExists { .. })
        ));
        let stale = vec![ArtifactWrite::put(
            ArtifactKind::Breed,
            "a",
            json!({}),
            PutMode::Update(Version(4)),
        )];
        match plan("t", 5, with_b.clone(), stale) {
            Err(Error::Conflict {
                expected: 4,
                found: Some(5),
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        let stale_delete = vec![ArtifactWrite::delete(
            ArtifactKind::Breed,
            "b",
            Some(Version(1)),
        )];
        match plan("t", 5, with_b, stale_delete) {
            Err(Error::Conflict {
                expected: 1,
                found: None,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_same_content_again_is_not_a_write() {
        let current = state(&[("a", 5, json!({"x": [1, 2]}))]);
        let writes = vec![ArtifactWrite::put(
            ArtifactKind::Breed,
            "a",
            json!({"x": [1, 2]}),
            PutMode::Overwrite,
        )];
        let plan = plan("t", 9, current, writes).unwrap();
        assert_eq!(plan.results, vec![Some(Version(5))]);
        assert!(plan.actions.is_empty());
        assert_eq!(plan.head, 9);
    }

    #[test]
    fn chunks_keep_to_rows_and_bytes() {
        let lens = |c: Vec<&[usize]>| c.iter().map(|c| c.len()).collect::<Vec<_>>();
        assert_eq!(lens(chunks(&[1; 1200], |n| *n)), [500, 500, 200]);
        assert_eq!(lens(chunks(&[1; 500], |n| *n)), [500]);
        assert!(chunks(&[] as &[usize], |n| *n).is_empty());
        // A row larger than the limit goes alone; rows fill a chunk up to the limit.
        let big = [3 << 20, 3 << 20, 10, 5 << 20, 1, 1 << 20, 1 << 20];
        assert_eq!(lens(chunks(&big, |n| *n)), [1, 2, 1, 3]);
    }

    #[test]
    fn the_net_effect_keeps_one_row_per_artifact() {
        let writes = vec![
            // a: created, updated, deleted: logs only.
            ArtifactWrite::put(ArtifactKind::Breed, "a", json!({"v": 1}), PutMode::Create),
            ArtifactWrite::put(
                ArtifactKind::Breed,
                "a",
                json!({"v": 2}),
                PutMode::Overwrite,
            ),
            ArtifactWrite::delete(ArtifactKind::Breed, "a", None),
            // b (stored at 5): deleted and created again: removed at 5, added at its last.
            ArtifactWrite::delete(ArtifactKind::Breed, "b", Some(Version(5))),
            ArtifactWrite::put(ArtifactKind::Breed, "b", json!({"v": 3}), PutMode::Create),
            // c (stored at 6): updated twice: removed at 6, added with the second content.
            ArtifactWrite::put(
                ArtifactKind::Breed,
                "c",
                json!({"v": 4}),
                PutMode::Overwrite,
            ),
            ArtifactWrite::put(
                ArtifactKind::Breed,
                "c",
                json!({"v": 5}),
                PutMode::Overwrite,
            ),
        ];
        let mut current = state(&[("b", 5, json!({})), ("c", 6, json!({}))]);
        current.insert((ArtifactKind::Breed, "a".into()), None);
        let net = plan("t", 10, current, writes).unwrap().net();
        let logs: Vec<_> = net
            .logs
            .iter()
            .map(|l| (l.version, l.name.as_str()))
            .collect();
        assert_eq!(
            logs,
            [
                (11, "a"),
                (12, "a"),
                (13, "a"),
                (14, "b"),
                (15, "b"),
                (16, "c"),
                (17, "c")
            ]
        );
        let removals: Vec<_> = net
            .removals
            .iter()
            .map(|r| (r.name.as_str(), r.expected))
            .collect();
        assert_eq!(removals, [("b", 5), ("c", 6)]);
        let rows: Vec<_> = net
            .rows
            .iter()
            .map(|r| (r.name.as_str(), r.version, r.content.as_str()))
            .collect();
        assert_eq!(rows, [("b", 15, r#"{"v":3}"#), ("c", 17, r#"{"v":5}"#)]);
    }

    #[test]
    fn long_names_are_refused() {
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        let writes = vec![ArtifactWrite::delete(ArtifactKind::Breed, long, None)];
        assert!(matches!(
            check_names(&writes),
            Err(Error::Invalid {
                what: "artifact name",
                ..
            })
        ));
        let ok = vec![ArtifactWrite::delete(
            ArtifactKind::Breed,
            "ü".repeat(MAX_NAME_CHARS),
            None,
        )];
        check_names(&ok).unwrap();
    }
}
