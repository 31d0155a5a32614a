//! Errors of the policy crate. Every one is a problem with the policy directory (or
//! reading it), located by file and line so that the author can fix it without guessing.

use std::fmt;
use std::path::{Path, PathBuf};

use miette::Diagnostic;

/// One problem found in a schema, policy or policy-test file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file, as found under the policy directory.
    pub file: PathBuf,
    /// 1-based line, when the problem has a location.
    pub line: Option<usize>,
    /// 1-based column (in characters), when the problem has a location.
    pub column: Option<usize>,
    /// What is wrong, in Cedar's words where Cedar found it.
    pub message: String,
}

/// Why a policy directory could not be loaded, checked or tested.
#[derive(thiserror::Error, Debug)]
pub enum PolicyError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The schema, a policy or a policy-test file is invalid; nothing was loaded.
    #[error("{}", render_problems(problems))]
    Invalid {
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
    /// `run_tests` found no `tests/*.toml` beside the policies.
    #[error("no policy tests: {} has no *.toml files", dir.display())]
    NoTests {
        /// The directory that was searched.
        dir: PathBuf,
    },
}

impl Problem {
    /// A problem with a file as a whole.
    pub(crate) fn in_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: None,
            column: None,
            message: message.into(),
        }
    }

    /// A problem at a byte offset of `src`, the text of `file`.
    pub(crate) fn at_offset(file: &Path, src: &str, offset: usize, message: impl Into<String>) -> Self {
        let (line, column) = line_and_column(src, offset);
        Self {
            file: file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            message: message.into(),
        }
    }

    /// Problems from a Cedar (miette) diagnostic whose source spans index into `src`.
    /// Related diagnostics become problems of their own, so none is lost.
    pub(crate) fn from_diagnostic(file: &Path, src: &str, diag: &dyn Diagnostic) -> Vec<Self> {
        let mut message = diag.to_string();
        if let Some(help) = diag.help() {
            message.push_str(" (help: ");
            message.push_str(&help.to_string());
            message.push(')');
        }
        let offset = diag
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| label.offset());
        let mut problems = vec![match offset {
            Some(offset) => Self::at_offset(file, src, offset, message),
            None => Self::in_file(file, message),
        }];
        if let Some(related) = diag.related() {
            for inner in related {
                problems.extend(Self::from_diagnostic(file, src, inner));
            }
        }
        problems
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        write!(f, ": {}", self.message)
    }
}

impl PolicyError {
    /// Every located problem, empty for I/O errors.
    pub fn problems(&self) -> &[Problem] {
        match self {
            Self::Invalid { problems } => problems,
            Self::Io { .. } | Self::NoTests { .. } => &[],
        }
    }
}

/// 1-based line and column of a byte offset; an offset past the end points after the
/// last character rather than failing, since it only serves a message.
fn line_and_column(src: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(src.len());
    while !src.is_char_boundary(end) {
        end -= 1;
    }
    let before = &src[..end];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn render_problems(problems: &[Problem]) -> String {
    let mut out = match problems.len() {
        1 => String::from("invalid policy set: 1 problem"),
        n => format!("invalid policy set: {n} problems"),
    };
    for problem in problems {
        out.push_str("\n  ");
        out.push_str(&problem.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let src = "ab\ncdé\nf";
        assert_eq!(line_and_column(src, 0), (1, 1));
        assert_eq!(line_and_column(src, 3), (2, 1));
        assert_eq!(line_and_column(src, 7), (2, 4));
        assert_eq!(line_and_column(src, 8), (3, 1));
        // inside the two-byte é, and past the end: clamped, never a panic
        assert_eq!(line_and_column(src, 6), (2, 3));
        assert_eq!(line_and_column(src, 100), (3, 2));
    }

    #[test]
    fn invalid_lists_every_problem_with_its_location() {
        let err = PolicyError::Invalid {
            problems: vec![
                Problem::at_offset(Path::new("p/a.cedar"), "x\ny", 2, "bad"),
                Problem::in_file(Path::new("p/b.cedar"), "worse"),
            ],
        };
        assert_eq!(
            err.to_string(),
            "invalid policy set: 2 problems\n  p/a.cedar:2:1: bad\n  p/b.cedar: worse"
        );
        assert_eq!(err.problems().len(), 2);
    }
}
