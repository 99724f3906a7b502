//! A small spanned walker over a parsed TOML document.
//!
//! serde stops at the first problem; operators fixing a config want every problem at once, each with
//! the file, the line and the dotted key. This walker takes keys out of spanned tables, turns values
//! into typed ones, and records an [`Issue`] for each problem instead of returning early. Whatever is
//! left in a table when it is finished is an unknown key.
//!
//! `toml_span::de_helpers::TableHelper` collects errors too, but they carry only a span: no dotted
//! key (a list item's error does not even say its index), and all unknown keys of a table come as
//! one error, so the messages here could not be rebuilt from it.

use std::str::FromStr;
use std::time::Duration;

use toml_span::value::{Table, Value, ValueInner};

use super::Issue;

/// Collects issues and turns byte offsets into line numbers.
pub(crate) struct Ctx<'s> {
    line_starts: Vec<usize>,
    pub(crate) issues: Vec<Issue>,
    _src: &'s str,
}

impl<'s> Ctx<'s> {
    pub(crate) fn new(src: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Ctx {
            line_starts,
            issues: Vec::new(),
            _src: src,
        }
    }

    /// 1-based line of a byte offset.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&s| s <= offset)
    }

    pub(crate) fn issue(&mut self, offset: usize, key: &str, message: impl Into<String>) {
        let line = self.line(offset);
        self.issues.push(Issue {
            line,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// A value taken out of a table, with its dotted key and position.
pub(crate) struct Field<'de> {
    pub(crate) key: String,
    pub(crate) offset: usize,
    pub(crate) value: Value<'de>,
}

/// A TOML table being read; call [`Section::finish`] to report unknown keys.
pub(crate) struct Section<'de> {
    pub(crate) path: String,
    offset: usize,
    table: Table<'de>,
    known: Vec<&'static str>,
    given: Vec<&'static str>,
}

impl<'de> Section<'de> {
    /// Opens `value` as a table, or records an issue.
    pub(crate) fn open(ctx: &mut Ctx<'_>, path: String, mut value: Value<'de>) -> Option<Self> {
        let offset = value.span.start;
        match value.take() {
            ValueInner::Table(table) => Some(Section {
                path,
                offset,
                table,
                known: Vec::new(),
                given: Vec::new(),
            }),
            other => {
                let found = other.type_str();
                ctx.issue(offset, &path, format!("expected a table, found a {found}"));
                None
            }
        }
    }

    /// An empty section standing for a table that is absent from the file.
    pub(crate) fn empty(path: &str) -> Self {
        Section {
            path: path.to_string(),
            offset: 0,
            table: Table::new(),
            known: Vec::new(),
            given: Vec::new(),
        }
    }

    pub(crate) fn contains_key(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    pub(crate) fn offset(&self) -> usize {
        self.offset
    }

    pub(crate) fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Takes a key out of the table, remembering that it is a known key.
    pub(crate) fn take(&mut self, key: &'static str) -> Option<Field<'de>> {
        self.known.push(key);
        let (k, value) = self.table.remove_entry(key)?;
        self.given.push(key);
        Some(Field {
            key: self.key_path(key),
            offset: k.span.start,
            value,
        })
    }

    /// Records an unknown-key issue for every key nobody asked for.
    pub(crate) fn finish(self, ctx: &mut Ctx<'_>) {
        let expected = self.known.join(", ");
        for k in self.table.keys() {
            let key = self.key_path(&k.name);
            ctx.issue(k.span.start, &key, format!("unknown key (expected one of: {expected})"));
        }
    }

    /// Whether `key` was in the table when it was taken.
    pub(crate) fn given(&self, key: &str) -> bool {
        self.given.contains(&key)
    }

    /// A key with a default: absent, or present but bad (its issue recorded), it is the default.
    pub(crate) fn with_default<T>(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
        read: impl FnOnce(&mut Ctx<'_>, Field<'de>) -> Option<T>,
        default: impl FnOnce() -> T,
    ) -> T {
        self.take(key).and_then(|f| read(ctx, f)).unwrap_or_else(default)
    }

    /// A key without a default: absent is an issue saying `missing`.
    pub(crate) fn required<T>(
        &mut self,
        ctx: &mut Ctx<'_>,
        key: &'static str,
        read: impl FnOnce(&mut Ctx<'_>, Field<'de>) -> Option<T>,
        missing: &str,
    ) -> Option<T> {
        match self.take(key) {
            Some(f) => read(ctx, f),
            None => {
                ctx.issue(self.offset, &self.key_path(key), missing);
                None
            }
        }
    }

    /// A value computed from the section rather than read from one key.
    pub(crate) fn derive<T>(&self, derive: impl FnOnce(&Self) -> Option<T>) -> Option<T> {
        derive(self)
    }

    pub(crate) fn string(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Spanned<String>> {
        self.take(key)?.into_string(ctx)
    }

    pub(crate) fn bool(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<bool> {
        boolean(ctx, self.take(key)?)
    }

    pub(crate) fn strings(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Vec<Spanned<String>>> {
        self.take(key)?.into_strings(ctx)
    }

    /// A string parsed with `FromStr`; `what` says what was expected.
    pub(crate) fn parsed<T: FromStr>(&mut self, ctx: &mut Ctx<'_>, key: &'static str, what: &str) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        parsed(ctx, self.take(key)?, what)
    }

    /// A human duration such as "90s", "10m" or "1h".
    pub(crate) fn duration(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Duration> {
        duration(ctx, self.take(key)?)
    }

    /// `[[name]]` arrays of tables.
    pub(crate) fn tables(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Vec<Section<'de>> {
        let Some(mut f) = self.take(key) else {
            return Vec::new();
        };
        match f.value.take() {
            ValueInner::Array(items) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| Section::open(ctx, format!("{key}[{i}]"), v))
                .collect(),
            other => {
                let found = other.type_str();
                ctx.issue(f.offset, &f.key, format!("expected [[{key}]] tables, found a {found}"));
                Vec::new()
            }
        }
    }

    /// A nested table such as `tls = { ... }`, if present.
    pub(crate) fn table(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Section<'de>> {
        let f = self.take(key)?;
        Section::open(ctx, f.key, f.value)
    }
}

/// `true` or `false`.
pub(crate) fn boolean(ctx: &mut Ctx<'_>, mut f: Field<'_>) -> Option<bool> {
    match f.value.take() {
        ValueInner::Boolean(b) => Some(b),
        other => {
            ctx.issue(
                f.offset,
                &f.key,
                format!("expected true or false, found a {}", other.type_str()),
            );
            None
        }
    }
}

/// A string.
pub(crate) fn string(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<String> {
    f.into_string(ctx).map(|s| s.value)
}

/// A key whose absence means "none": read with `read`, wrapped in `Some`.
pub(crate) fn optional<'de, T>(
    read: impl FnOnce(&mut Ctx<'_>, Field<'de>) -> Option<T>,
) -> impl FnOnce(&mut Ctx<'_>, Field<'de>) -> Option<Option<T>> {
    move |ctx, f| read(ctx, f).map(Some)
}

/// A string parsed with `FromStr`; `what` says what was expected.
pub(crate) fn parsed<T: FromStr>(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<T>
where
    T::Err: std::fmt::Display,
{
    let s = f.into_string(ctx)?;
    match s.value.parse::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.issue(s.offset, &s.key, format!("expected {what}, found {:?} ({e})", s.value));
            None
        }
    }
}

/// An address like "127.0.0.1:8080".
pub(crate) fn address(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<std::net::SocketAddr> {
    parsed(ctx, f, "an address like \"127.0.0.1:8080\"")
}

/// A header name.
pub(crate) fn header_name(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<http::HeaderName> {
    parsed(ctx, f, "a header name")
}

/// A human duration such as "90s", "10m" or "1h".
pub(crate) fn duration(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<Duration> {
    let s = f.into_string(ctx)?;
    parse_duration(ctx, &s)
}

/// A size such as "256MiB" or "10MB".
pub(crate) fn size(ctx: &mut Ctx<'_>, f: Field<'_>) -> Option<u64> {
    let s = f.into_string(ctx)?;
    // The library's own message ("cannot parse float from empty string") says nothing a
    // user can act on: say what a size looks like instead.
    let looks_like_size = s.value.trim().starts_with(|c: char| c.is_ascii_digit());
    match s.value.parse::<bytesize::ByteSize>() {
        Ok(b) if looks_like_size => Some(b.as_u64()),
        _ => {
            ctx.issue(
                s.offset,
                &s.key,
                format!(
                    "expected a size like \"64MiB\" (a number, then B, KB, KiB, MB, MiB, GB or GiB), found {:?}",
                    s.value
                ),
            );
            None
        }
    }
}

/// Parses a duration string with humantime, recording an issue on failure.
pub(crate) fn parse_duration(ctx: &mut Ctx<'_>, s: &Spanned<String>) -> Option<Duration> {
    match humantime::parse_duration(&s.value) {
        Ok(d) => Some(d),
        // humantime's messages ("expected number at 0") point into the string, not at the fix.
        Err(_) => {
            ctx.issue(
                s.offset,
                &s.key,
                format!(
                    "expected a duration like \"90s\", \"250ms\", \"10m\" or \"1h\" (a number, then ms, s, m, h or d), found {:?}",
                    s.value
                ),
            );
            None
        }
    }
}

/// A string value with its key and position, for semantic checks after parsing.
#[derive(Debug, Clone)]
pub(crate) struct Spanned<T> {
    pub(crate) key: String,
    pub(crate) offset: usize,
    pub(crate) value: T,
}

impl<'de> Field<'de> {
    pub(crate) fn into_string(mut self, ctx: &mut Ctx<'_>) -> Option<Spanned<String>> {
        match self.value.take() {
            ValueInner::String(s) => Some(Spanned {
                key: self.key,
                offset: self.value.span.start,
                value: s.into_owned(),
            }),
            other => {
                let found = other.type_str();
                ctx.issue(self.offset, &self.key, format!("expected a string, found a {found}"));
                None
            }
        }
    }

    pub(crate) fn into_strings(mut self, ctx: &mut Ctx<'_>) -> Option<Vec<Spanned<String>>> {
        match self.value.take() {
            ValueInner::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, mut item) in items.into_iter().enumerate() {
                    let key = format!("{}[{i}]", self.key);
                    let offset = item.span.start;
                    match item.take() {
                        ValueInner::String(s) => out.push(Spanned {
                            key,
                            offset,
                            value: s.into_owned(),
                        }),
                        other => {
                            ok = false;
                            let found = other.type_str();
                            ctx.issue(offset, &key, format!("expected a string, found a {found}"));
                        }
                    }
                }
                ok.then_some(out)
            }
            other => {
                let found = other.type_str();
                ctx.issue(
                    self.offset,
                    &self.key,
                    format!("expected a list of strings, found a {found}"),
                );
                None
            }
        }
    }
}
