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
