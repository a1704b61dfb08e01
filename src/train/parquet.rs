//! Parquet files (how Hugging Face datasets are stored) read as rows of JSON objects, so
//! that every loader that takes JSONL takes Parquet too. Columns map to fields by name;
//! strings, numbers, lists (a `messages` column of {role, content} structs) and structs
//! come through as their JSON counterparts.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::Value;

use crate::error::{Error, Result};

/// Whether `path` names a Parquet file (by its extension).
pub fn is_parquet(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"))
}

/// A record: its row (or line) number from 1, its object, and its JSON text.
pub type Record = (usize, serde_json::Map<String, Value>, String);

/// The rows of a Parquet file as records.
pub fn read_rows(path: &Path) -> Result<Vec<Record>> {
    crate::files::require_regular(path)?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // the parquet crate can panic on malformed pages: that is an error naming the file
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_all(path, file)));
    read.unwrap_or_else(|_| {
        Err(Error::file(
            path,
            "not a readable Parquet file (the reader failed on a malformed page)",
        ))
    })
}

fn read_all(path: &Path, file: std::fs::File) -> Result<Vec<Record>> {
    let bad = |e: parquet::errors::ParquetError| {
        Error::file(path, format!("not a readable Parquet file: {e}"))
    };
    let reader = SerializedFileReader::new(file).map_err(bad)?;
    // rows are collected as they come: the file's own row count is not trusted
    let mut out = Vec::new();
    for (i, row) in reader.get_row_iter(None).map_err(bad)?.enumerate() {
        let row = row.map_err(|e| Error::file(path, format!("row {}: {e}", i + 1)))?;
        match row.to_json_value() {
            Value::Object(o) => {
                let text = serde_json::to_string(&o).unwrap_or_default();
                out.push((i + 1, o, text));
            }
            other => {
                return Err(Error::file(
                    path,
                    format!("row {}: expected a record, got {other}", i + 1),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(Error::file(path, "no rows (the file is empty)"));
    }
    Ok(out)
}
