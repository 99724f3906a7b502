//! A small spanned walker over a parsed TOML document.
//!
//! serde stops at the first problem; operators fixing a config want every problem at once, each with
//! the file, the line and the dotted key. This walker takes keys out of spanned tables, turns values
//! into typed ones, and records an [`Issue`] for each problem instead of returning early. Whatever is
//! left in a table when it is finished is an unknown key.

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

    pub(crate) fn string(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Spanned<String>> {
        let f = self.take(key)?;
        f.into_string(ctx)
    }

    pub(crate) fn bool(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<bool> {
        let mut f = self.take(key)?;
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

    pub(crate) fn strings(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Vec<Spanned<String>>> {
        let f = self.take(key)?;
        f.into_strings(ctx)
    }

    /// A string parsed with `FromStr`; `what` says what was expected.
    pub(crate) fn parsed<T: FromStr>(&mut self, ctx: &mut Ctx<'_>, key: &'static str, what: &str) -> Option<T>
    where
        T::Err: std::fmt::Display,
    {
        let s = self.string(ctx, key)?;
        match s.value.parse::<T>() {
            Ok(v) => Some(v),
            Err(e) => {
                ctx.issue(s.offset, &s.key, format!("expected {what}, found {:?} ({e})", s.value));
                None
            }
        }
    }

    /// A human duration such as "90s", "10m" or "1h".
    pub(crate) fn duration(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<Duration> {
        let s = self.string(ctx, key)?;
        parse_duration(ctx, &s)
    }

    /// A size such as "256MiB" or "10MB".
    pub(crate) fn size(&mut self, ctx: &mut Ctx<'_>, key: &'static str) -> Option<u64> {
        let s = self.string(ctx, key)?;
        match s.value.parse::<bytesize::ByteSize>() {
            Ok(b) => Some(b.as_u64()),
            Err(e) => {
                ctx.issue(
                    s.offset,
                    &s.key,
                    format!("expected a size like \"10MiB\", found {:?} ({e})", s.value),
                );
                None
            }
        }
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

/// Parses a duration string with humantime, recording an issue on failure.
pub(crate) fn parse_duration(ctx: &mut Ctx<'_>, s: &Spanned<String>) -> Option<Duration> {
    match humantime::parse_duration(&s.value) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.issue(
                s.offset,
                &s.key,
                format!(
                    "expected a duration like \"90s\", \"10m\" or \"1h\", found {:?} ({e})",
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
