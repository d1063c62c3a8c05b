//! How figures read in human output: sizes to three significant digits,
//! times relative to now ("3 min ago", "in 12 s"), durations in the unit
//! that fits, and tables that fit the terminal (comfy-table).
//!
//! Every human-facing message of the client and the server goes through
//! these helpers, so a size reads the same in a table and in an error. The
//! JSON answers never do: they keep full precision for programs.

use comfy_table::{ColumnConstraint, ContentArrangement, Table, Width, presets};

/// `x` rounded to three significant digits, trailing zeros dropped:
/// 0.471859224 → "0.472", 4.8 → "4.8", 1234.5 → "1230", 0 → "0".
pub fn sig3(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    if x == 0.0 {
        return "0".into();
    }
    let magnitude = x.abs().log10().floor() as i32;
    if magnitude >= 2 {
        // 3 or more integer digits: round away the digits past the third.
        let unit = 10f64.powi(magnitude - 2);
        return format!("{}", ((x / unit).round() * unit) as i64);
    }
    let decimals = (2 - magnitude) as usize;
    let s = format!("{x:.decimals$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        &s
    };
    // -0.0001 rounds to "-0.000" → "-0".
    if s == "-0" { "0".into() } else { s.to_string() }
}

/// A byte count as a three-digit GB figure (no unit): 471_859_224 → "0.472".
pub fn bytes_gb(bytes: u64) -> String {
    sig3(crate::config::bytes_to_gb(bytes))
}

/// A GB figure for people: `0.471859224` → "0.472 GB".
pub fn gb(x: f64) -> String {
    format!("{} GB", sig3(x))
}

/// A length of time in the unit that fits: "0.4 s", "12 s", "3 min",
/// "2.5 h", "3 d".
pub fn duration(secs: f64) -> String {
    let s = secs.abs();
    if !s.is_finite() {
        return "-".into();
    }
    if s < 10.0 {
        format!("{} s", sig3((s * 10.0).round() / 10.0))
    } else if s < 90.0 {
        format!("{} s", s.round())
    } else if s < 90.0 * 60.0 {
        format!("{} min", (s / 60.0).round())
    } else if s < 48.0 * 3600.0 {
        format!("{} h", sig3(((s / 3600.0) * 10.0).round() / 10.0))
    } else {
        format!("{} d", (s / 86_400.0).round())
    }
}

/// `then` said relative to `now` (both in seconds on one clock): "3 min
/// ago", "in 12 s", "just now" within a second.
pub fn relative_time(then: f64, now: f64) -> String {
    let delta = now - then;
    if !delta.is_finite() {
        return "-".into();
    }
    if delta.abs() < 1.0 {
        return "just now".into();
    }
    let span = duration(delta.round());
    if delta > 0.0 { format!("{span} ago") } else { format!("in {span}") }
}

/// Columns are never narrower than their longest word up to this many
/// characters: longer words (paths, ids) may still be cut.
pub const WORD_MAX: usize = 24;

/// A terminal table (see [`table`]): a comfy-table, displayed with each
/// column at least as wide as its longest word (up to [`WORD_MAX`]), so a
/// narrow terminal wraps cells between words, never inside one; a table
/// that cannot fit otherwise runs past the edge.
#[derive(Debug, Clone)]
pub struct HumanTable(Table);

impl std::ops::Deref for HumanTable {
    type Target = Table;
    fn deref(&self) -> &Table {
        &self.0
    }
}

impl std::ops::DerefMut for HumanTable {
    fn deref_mut(&mut self) -> &mut Table {
        &mut self.0
    }
}

impl std::fmt::Display for HumanTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut t = self.0.clone();
        for i in 0..t.column_count() {
            let longest = t
                .column_cells_with_header_iter(i)
                .flatten()
                .filter_map(|c| c.content().split_whitespace().map(|w| w.chars().count()).max())
                .max()
                .unwrap_or(0)
                .min(WORD_MAX);
            let padding = t.column(i).map(|c| c.padding_width()).unwrap_or(0);
            if let Some(c) = t.column_mut(i) {
                let width = u16::try_from(longest).unwrap_or(u16::MAX).saturating_add(padding);
                c.set_constraint(ColumnConstraint::LowerBoundary(Width::Fixed(width)));
            }
        }
        write!(f, "{t}")
    }
}

/// A table for the terminal: a header row, no borders, columns wrapped to
/// the terminal's width (comfy-table reads it from the tty; `$COLUMNS`
/// when output is piped, unbounded otherwise, so scripts see whole cells)
/// between words ([`HumanTable`]).
pub fn table<I, S>(header: I) -> HumanTable
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut t = Table::new();
    t.load_style(presets::NOTHING).set_content_arrangement(ContentArrangement::Dynamic);
    if !t.is_tty()
        && let Some(cols) = std::env::var("COLUMNS").ok().and_then(|c| c.trim().parse::<u16>().ok())
    {
        t.set_width(cols);
    }
    t.set_header(header);
    HumanTable(t)
}

/// A point in time as a user writes it on the command line: `--since`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum When {
    /// That long before the server's now, seconds (`90s`, `30m`, `2h`,
    /// `1d`, `1h 30m`, with or without a trailing `ago`).
    Ago(f64),
    /// Unix seconds (a bare number, or an RFC 3339 UTC time such as
    /// `2026-12-03T10:00:00Z` or `2026-12-03 10:00`).
    At(f64),
}

impl When {
    /// The engine time it names, given the server's `now`.
    pub fn resolve(self, now: f64) -> f64 {
        match self {
            When::Ago(s) => now - s,
            When::At(t) => t,
        }
    }
}

/// Parses a [`When`]; the error says what is accepted.
pub fn parse_when(text: &str) -> Result<When, String> {
    let t = text.trim();
    if let Ok(x) = t.parse::<f64>() {
        return if x.is_finite() && x >= 0.0 {
            Ok(When::At(x))
        } else {
            Err(format!("{text:?}: a unix time is a number of seconds, 0 or more"))
        };
    }
    let span = t.strip_suffix("ago").map(str::trim_end).unwrap_or(t);
    if let Ok(d) = humantime::parse_duration(span) {
        return Ok(When::Ago(d.as_secs_f64()));
    }
    // Minutes without seconds ("2026-12-03 10:00") read as ":00".
    let full = if t.len() == "2026-12-03 10:00".len() {
        format!("{t}:00")
    } else {
        t.to_string()
    };
    if let Ok(at) = humantime::parse_rfc3339_weak(&full) {
        return Ok(When::At(
            at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
        ));
    }
    Err(format!(
        "{text:?} is not a time: give a span back from now (90s, 30m, 2h, 1d, \"1h 30m\"), \
         a UTC time (2026-12-03T10:00:00Z, \"2026-12-03 10:00\") or unix seconds"
    ))
}

/// Rewrites every `<number> GB` in a message to three significant digits,
/// so messages built from raw figures read well ("0.471859224 GB" →
/// "0.472 GB"). Numbers not followed by " GB" are left alone.
pub fn round_gb_in(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let bytes = message.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_number = bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'.' || bytes[i - 1] == b'_'));
        if starts_number {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_digit() || bytes[j] == b'.') {
                j += 1;
            }
            let number = &message[i..j];
            if message[j..].starts_with(" GB")
                && let Ok(x) = number.trim_end_matches('.').parse::<f64>()
                && number.contains('.')
            {
                out.push_str(&sig3(x));
            } else {
                out.push_str(number);
            }
            i = j;
            continue;
        }
        let ch = message[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_read_as_spans_utc_times_or_unix_seconds() {
        assert_eq!(parse_when("90s"), Ok(When::Ago(90.0)));
        assert_eq!(parse_when("2h"), Ok(When::Ago(7200.0)));
        assert_eq!(parse_when("1h 30m ago"), Ok(When::Ago(5400.0)));
        assert_eq!(parse_when("1d"), Ok(When::Ago(86_400.0)));
        assert_eq!(parse_when("1764756000"), Ok(When::At(1_764_756_000.0)));
        assert_eq!(parse_when("1764756000.5"), Ok(When::At(1_764_756_000.5)));
        // 2026-12-03T10:00:00Z
        assert_eq!(parse_when("2026-12-03T10:00:00Z"), Ok(When::At(1_796_292_000.0)));
        assert_eq!(parse_when("2026-12-03 10:00"), Ok(When::At(1_796_292_000.0)));
        for bad in ["", "soon", "-5", "2026-13-03T10:00:00Z", "NaN", "inf"] {
            let e = parse_when(bad).expect_err(bad);
            assert!(e.contains("unix"), "{bad}: {e}");
        }
        assert_eq!(When::Ago(60.0).resolve(1000.0), 940.0);
        assert_eq!(When::At(5.0).resolve(1000.0), 5.0);
    }

    #[test]
    fn sizes_have_three_significant_digits() {
        assert_eq!(sig3(0.471859224), "0.472");
        assert_eq!(sig3(4.8), "4.8");
        assert_eq!(sig3(4.0), "4");
        assert_eq!(sig3(12.345), "12.3");
        assert_eq!(sig3(123.456), "123");
        assert_eq!(sig3(1234.5), "1230");
        assert_eq!(sig3(0.0), "0");
        assert_eq!(sig3(-2.3456), "-2.35");
        assert_eq!(sig3(0.000123456), "0.000123");
        assert_eq!(sig3(9.999), "10");
        assert_eq!(gb(0.471859224), "0.472 GB");
    }

    #[test]
    fn times_read_relative_to_now() {
        assert_eq!(relative_time(100.0, 280.0), "3 min ago");
        assert_eq!(relative_time(112.0, 100.0), "in 12 s");
        assert_eq!(relative_time(100.0, 100.4), "just now");
        assert_eq!(relative_time(0.0, 3.0 * 3600.0), "3 h ago");
        assert_eq!(relative_time(0.0, 5.0 * 86_400.0), "5 d ago");
        assert_eq!(duration(0.42), "0.4 s");
        assert_eq!(duration(45.0), "45 s");
    }

    #[test]
    fn gb_figures_in_messages_are_rounded() {
        assert_eq!(
            round_gb_in("needs 0.471859224 GB more, limit 5 GB, model v1.2 is 3.14159 GB"),
            "needs 0.472 GB more, limit 5 GB, model v1.2 is 3.14 GB"
        );
        assert_eq!(round_gb_in("tier ram: 12.5 GB (é)"), "tier ram: 12.5 GB (é)");
        assert_eq!(round_gb_in("no figures"), "no figures");
    }

    #[test]
    fn tables_wrap_to_the_width_given() {
        let mut t = table(["MODEL", "ERROR"]);
        t.set_width(30);
        t.add_row(["a-model", "a rather long error message that must wrap"]);
        let text = t.to_string();
        assert!(text.lines().all(|l| l.chars().count() <= 30), "{text}");
        assert!(text.lines().count() > 2, "{text}");
    }
}
