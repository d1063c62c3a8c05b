//! Workloads: a catalog of models with sizes and a trace of timed accesses,
//! read from and written to the simulator's two CSV formats.
//!
//! - `catalog.csv`: header `model_name,size_gb`, one model per line;
//! - `trace.csv`: header `timestamp_s,model_name`, timestamps ascending.
//!
//! Errors name the file and the line.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Why the simulator could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A line of an input file is malformed.
    #[error("{path}:{line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    /// The inputs do not fit together, or an argument is wrong.
    #[error("{0}")]
    Invalid(String),
}

impl SimError {
    pub fn io(path: &Path, source: std::io::Error) -> SimError {
        SimError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn parse(path: &Path, line: usize, message: impl Into<String>) -> SimError {
        SimError::Parse {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// Models and their sizes, in file order (which is also their engine id).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Catalog {
    pub names: Vec<String>,
    pub sizes_gb: Vec<f64>,
}

/// Accesses in time order, by catalog index.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Trace {
    pub times: Vec<f64>,
    pub models: Vec<u32>,
}

impl Trace {
    pub fn len(&self) -> usize {
        self.times.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times.is_empty()
    }
}

fn read(path: &Path) -> Result<String, SimError> {
    std::fs::read_to_string(path).map_err(|e| SimError::io(path, e))
}

/// Data lines of a CSV text after checking its header: (line number, fields).
fn rows<'a>(path: &'a Path, text: &'a str, header: &'a str) -> Result<impl Iterator<Item = (usize, &'a str)> + 'a, SimError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
    let first = lines.find(|(_, l)| !l.is_empty());
    match first {
        Some((_, h)) if h.split(',').map(str::trim).eq(header.split(',')) => {}
        Some((n, h)) => return Err(SimError::parse(path, n, format!("expected the header `{header}`, found `{h}`"))),
        None => return Err(SimError::parse(path, 1, format!("empty file; expected the header `{header}`"))),
    }
    Ok(lines.filter(|(_, l)| !l.is_empty() && !l.starts_with('#')))
}

fn two_fields<'a>(path: &Path, n: usize, line: &'a str, what: &str) -> Result<(&'a str, &'a str), SimError> {
    let mut it = line.split(',');
    match (it.next(), it.next(), it.next()) {
        (Some(a), Some(b), None) => Ok((a.trim(), b.trim())),
        _ => Err(SimError::parse(path, n, format!("expected 2 fields `{what}`, found `{line}`"))),
    }
}

impl Catalog {
    /// Parses a catalog's text; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Catalog, SimError> {
        let mut c = Catalog::default();
        let mut seen = HashMap::new();
        for (n, line) in rows(path, text, "model_name,size_gb")? {
            let (name, size) = two_fields(path, n, line, "model_name,size_gb")?;
            if name.is_empty() {
                return Err(SimError::parse(path, n, "empty model_name"));
            }
            let size: f64 = size
                .parse()
                .map_err(|_| SimError::parse(path, n, format!("size_gb `{size}` is not a number")))?;
            if !(size.is_finite() && size >= 0.0) {
                return Err(SimError::parse(
                    path,
                    n,
                    format!("size_gb must be a non-negative number, got {size}"),
                ));
            }
            if size > crate::config::MAX_GB {
                return Err(SimError::parse(
                    path,
                    n,
                    format!("size_gb must be at most {} GB, got {size}", crate::config::MAX_GB),
                ));
            }
            if let Some(first) = seen.insert(name.to_string(), n) {
                return Err(SimError::parse(
                    path,
                    n,
                    format!("model {name:?} is listed twice (first on line {first})"),
                ));
            }
            c.names.push(name.to_string());
            c.sizes_gb.push(size);
        }
        if c.names.is_empty() {
            return Err(SimError::parse(path, 1, "the catalog lists no models"));
        }
        Ok(c)
    }

    pub fn load(path: &Path) -> Result<Catalog, SimError> {
        Catalog::parse(path, &read(path)?)
    }

    /// The CSV text.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("model_name,size_gb\n");
        for (n, g) in self.names.iter().zip(&self.sizes_gb) {
            let _ = writeln!(s, "{n},{g}");
        }
        s
    }
}

impl Trace {
    /// Parses a trace's text against `catalog`; `path` only names it in errors.
    pub fn parse(path: &Path, text: &str, catalog: &Catalog) -> Result<Trace, SimError> {
        let index: HashMap<&str, u32> = catalog.names.iter().enumerate().map(|(i, n)| (n.as_str(), i as u32)).collect();
        let mut t = Trace::default();
        let mut prev = f64::NEG_INFINITY;
        for (n, line) in rows(path, text, "timestamp_s,model_name")? {
            let (ts, name) = two_fields(path, n, line, "timestamp_s,model_name")?;
            let ts: f64 = ts
                .parse()
                .map_err(|_| SimError::parse(path, n, format!("timestamp_s `{ts}` is not a number")))?;
            if !ts.is_finite() {
                return Err(SimError::parse(path, n, format!("timestamp_s must be finite, got {ts}")));
            }
            if ts < prev {
                return Err(SimError::parse(
                    path,
                    n,
                    format!("timestamps must be ascending: {ts} comes after {prev}"),
                ));
            }
            prev = ts;
            let Some(&id) = index.get(name) else {
                return Err(SimError::parse(path, n, format!("model {name:?} is not in the catalog")));
            };
            t.times.push(ts);
            t.models.push(id);
        }
        Ok(t)
    }

    pub fn load(path: &Path, catalog: &Catalog) -> Result<Trace, SimError> {
        Trace::parse(path, &read(path)?, catalog)
    }

    /// The CSV text (timestamps with millisecond precision).
    pub fn to_csv(&self, catalog: &Catalog) -> String {
        let mut s = String::with_capacity(self.len() * 24 + 32);
        s.push_str("timestamp_s,model_name\n");
        for (t, m) in self.times.iter().zip(&self.models) {
            let _ = writeln!(s, "{t:.3},{}", catalog.names[*m as usize]);
        }
        s
    }
}

/// Writes `catalog.csv` and `trace.csv` into `dir` (created if needed).
pub fn write_workload(dir: &Path, catalog: &Catalog, trace: &Trace) -> Result<(), SimError> {
    std::fs::create_dir_all(dir).map_err(|e| SimError::io(dir, e))?;
    let c = dir.join("catalog.csv");
    std::fs::write(&c, catalog.to_csv()).map_err(|e| SimError::io(&c, e))?;
    let t = dir.join("trace.csv");
    std::fs::write(&t, trace.to_csv(catalog)).map_err(|e| SimError::io(&t, e))?;
    Ok(())
}
