//! Reading the lab's TOML files (topologies and scenarios) into typed specs.
//!
//! Every error names the file and the field: a syntax error gives the line and column, a type
//! or value error gives the field's path (`link[2].a.node`), so a user can fix the file without
//! reading the lab's code. Unknown fields are errors too (a typo never passes silently).

use std::path::Path;

use serde::de::DeserializeOwned;

/// A topology or scenario file that is unreadable or invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct SpecError {
    /// The file, as given.
    pub file: String,
    /// The offending field's path (`node[1].role`), or the syntax error's position.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl SpecError {
    /// An error about `field` of `file`.
    pub fn new(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { file: file.display().to_string(), field: field.into(), message: message.into() }
    }
}

/// Reads `path` as a TOML table.
pub fn read_table(path: &Path) -> Result<toml::Table, SpecError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| SpecError::new(path, "(file)", format!("cannot read: {e}")))?;
    text.parse::<toml::Table>().map_err(|e| {
        let field = match e.span() {
            Some(span) => {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                format!("line {line} column {column}")
            }
            None => "(syntax)".to_owned(),
        };
        SpecError::new(path, field, e.message().trim().to_owned())
    })
}

/// Deserializes `table` into `T`, naming the failing field's path (prefixed with `prefix`).
pub fn from_table<T: DeserializeOwned>(path: &Path, prefix: &str, table: toml::Table) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let field = e.path().to_string();
        let field = match (prefix.is_empty(), field.as_str()) {
            (true, _) => field,
            (false, ".") => prefix.to_owned(),
            (false, _) => format!("{prefix}.{field}"),
        };
        let message = e.into_inner().message().trim().to_owned();
        // A struct that flattens another (a VIP's `VipOptions`) reports an unknown key at its own
        // path, and without the list of known keys: put the key in the path, as for the others.
        let flattened =
            message.strip_prefix("unknown field `").and_then(|m| m.strip_suffix('`')).filter(|k| !k.contains('`'));
        let field = match flattened {
            Some(key) if field == "." => key.to_owned(),
            Some(key) => format!("{field}.{key}"),
            None => field,
        };
        SpecError::new(path, if field == "." { "(top level)".to_owned() } else { field }, message)
    })
}
