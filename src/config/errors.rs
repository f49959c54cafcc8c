//! Config errors that say where they are: `config.yaml:12:15: routes[1].upstream: ...`.

use super::locate::{Locations, Position};
use std::fmt;
use std::path::PathBuf;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub position: Position,
    /// The YAML path of the offending node, e.g. `routes[1].upstream`; empty for the document.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Position { line, column } = self.position;
        write!(f, "{}:{line}:{column}: ", self.file)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid(Vec<ConfigError>),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Read { path, source } => {
                write!(f, "cannot read config {}: {source}", path.display())
            }
            LoadError::Invalid(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for LoadError {}

impl LoadError {
    /// The located errors, if the file was read.
    pub fn errors(&self) -> &[ConfigError] {
        match self {
            LoadError::Invalid(e) => e,
            LoadError::Read { .. } => &[],
        }
    }
}

/// A problem found after deserialization, located later by its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }

    pub fn locate(self, file: &str, locations: &Locations) -> ConfigError {
        let position = locations.of(&self.path);
        ConfigError {
            file: file.to_string(),
            position,
            path: self.path,
            message: self.message,
        }
    }
}

/// Turns a serde_yaml error (syntax, type, unknown key) into a located error.
pub fn from_serde(file: &str, err: &serde_yaml::Error) -> ConfigError {
    let position = err
        .location()
        .map(|l| Position {
            line: l.line(),
            column: l.column(),
        })
        .unwrap_or(Position { line: 1, column: 1 });
    // serde_yaml repeats the position in its message; it goes in front instead. Other
    // positions in the message (where an unclosed sequence began) stay.
    let text = err.to_string().replacen(
        &format!(" at line {} column {}", position.line, position.column),
        "",
        1,
    );
    let (path, message) = match text.split_once(": ") {
        Some((path, rest)) if looks_like_path(path) => (path.to_string(), rest.to_string()),
        _ => (String::new(), text),
    };
    ConfigError {
        file: file.to_string(),
        position,
        path,
        message,
    }
}

fn looks_like_path(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(' ')
        && s.chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'))
}
