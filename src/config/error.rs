//! Why a configuration was refused, placed in the file: [`ConfigError`] names the file, the
//! line and column, and the key with the table it sits in; [`KeyError`] is a failure before
//! it is placed. A parse error's key comes from `serde_path_to_error`'s path.

use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde_path_to_error::Segment;

/// Why a bounded load gave no configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "storage not answering: reading the config and its locks folder took longer than {0:?} \
         (a hung shared mount?)"
    )]
    StorageNotAnswering(Duration),
    #[error("storage not answering: an earlier load of the config is still waiting for it")]
    StillWaiting,
    #[error("loading the config failed: {0}")]
    Failed(String),
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: key `{key}`{}: {message}", in_table(table))]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        /// The table the key sits in, as a path: `route[0]`, `lock-coordinator[1].health-check`;
        /// empty at the top level.
        table: String,
        key: String,
        message: String,
    },
}

fn in_table(table: &str) -> String {
    if table.is_empty() {
        String::new()
    } else {
        format!(" in {table}")
    }
}

/// A validation failure before it is placed in the file.
#[derive(Debug)]
pub(super) struct KeyError {
    pub span: Range<usize>,
    /// Filled in on the way out of each section's validator.
    pub table: String,
    pub key: String,
    pub message: String,
}

pub(super) fn key_error(span: Range<usize>, key: &str, message: impl Into<String>) -> KeyError {
    KeyError {
        span,
        table: String::new(),
        key: key.to_owned(),
        message: message.into(),
    }
}

impl KeyError {
    /// The same failure, one table further out: `health-check` in `lock-coordinator[0]`.
    pub fn in_table(mut self, table: &str) -> KeyError {
        self.table = if self.table.is_empty() {
            table.to_owned()
        } else {
            format!("{table}.{}", self.table)
        };
        self
    }

    /// A TOML syntax or type error: the key is the last part of serde's `path`, the table the
    /// rest. A syntax error has no path: its key is the one on the line it points into.
    pub fn from_toml(
        e: &toml::de::Error,
        path: Option<&serde_path_to_error::Path>,
        text: &str,
    ) -> KeyError {
        let span = e.span().unwrap_or(0..0);
        let mut parts: Vec<String> = Vec::new();
        for segment in path.into_iter().flat_map(serde_path_to_error::Path::iter) {
            match segment {
                // `toml::Spanned` reads its value through a map of private keys.
                Segment::Map { key } if key.starts_with("$__serde_spanned_private") => {}
                Segment::Map { key } => parts.push(key.clone()),
                Segment::Seq { index } => match parts.last_mut() {
                    Some(last) => last.push_str(&format!("[{index}]")),
                    None => parts.push(format!("[{index}]")),
                },
                Segment::Enum { variant } => parts.push(variant.clone()),
                Segment::Unknown => parts.push("?".to_owned()),
            }
        }
        let message = e.message().trim().to_owned();
        match parts.pop() {
            Some(key) => KeyError {
                span,
                table: parts.join("."),
                key,
                message,
            },
            None => key_error(span.clone(), &key_on_line(text, &span), message),
        }
    }

    /// Places the failure in `text`, read from `path`.
    pub fn locate(self, path: &Path, text: &str) -> ConfigError {
        let start = char_boundary(text, self.span.start);
        let before = &text[..start];
        let line = before.matches('\n').count() + 1;
        let column = start - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError::Invalid {
            path: path.display().to_string(),
            line,
            column,
            table: self.table,
            key: self.key,
            message: self.message,
        }
    }
}

/// The key of the `key = ...` line that `span` points into, else the table its header names.
fn key_on_line(text: &str, span: &Range<usize>) -> String {
    let start = char_boundary(text, span.start);
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next().unwrap_or("").trim();
    if let Some((key, _)) = line.split_once('=') {
        let key = key.trim().trim_matches('"');
        if !key.is_empty() {
            return key.to_owned();
        }
    }
    let header = line.trim_matches(|c| c == '[' || c == ']').trim();
    if header.is_empty() {
        "(document)".to_owned()
    } else {
        header.to_owned()
    }
}

/// `at`, moved back to the start of the character it falls in (and into `text`).
fn char_boundary(text: &str, at: usize) -> usize {
    (0..=at.min(text.len()))
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}
