//! Declaring a config section once: [`section!`](crate::config) turns one line per field (TOML
//! key, Rust type, default, reader, and whether a reload may change it) into the struct, its
//! `Default`, its reading code and its split into [`Part`]s.
//!
//! The split is what reload compares: a field's class is written next to its type, so a new
//! field cannot be forgotten by a separate list of restart-only settings.

use std::fmt;
use std::marker::PhantomData;

/// Whether a field may change on reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Read once at start-up (listeners, tiers, the trusted headers): a change needs a restart.
    Restart,
    /// Rebuilt on every reload.
    Reload,
}

/// A section whose fields each carry a [`Class`].
pub trait Classified {
    /// Whether every field of `class` is equal in both.
    fn same_in(&self, other: &Self, class: Class) -> bool;
    /// Dotted keys of the fields of `class` that differ, e.g. `listen`.
    fn changed_in(&self, other: &Self, class: Class) -> Vec<&'static str>;
    /// Writes the fields of `class` only.
    fn fmt_in(&self, class: Class, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

/// Marks the part a [`Part`] stands for.
pub trait PartClass {
    /// The class of the fields the part holds.
    const CLASS: Class;
}

/// The restart-only part.
#[derive(Debug, Clone, Copy)]
pub struct Restart;
/// The reloadable part.
#[derive(Debug, Clone, Copy)]
pub struct Reload;

impl PartClass for Restart {
    const CLASS: Class = Class::Restart;
}
impl PartClass for Reload {
    const CLASS: Class = Class::Reload;
}

/// The fields of one class of a section, compared and printed by value.
pub struct Part<'a, S, C> {
    section: &'a S,
    class: PhantomData<C>,
}

impl<'a, S: Classified, C: PartClass> Part<'a, S, C> {
    /// The `C` fields of `section`.
    pub fn of(section: &'a S) -> Self {
        Part {
            section,
            class: PhantomData,
        }
    }

    /// Keys of the fields that differ from `other`'s.
    pub fn changed(&self, other: &Self) -> Vec<&'static str> {
        self.section.changed_in(other.section, C::CLASS)
    }
}

impl<S: Classified, C: PartClass> PartialEq for Part<'_, S, C> {
    fn eq(&self, other: &Self) -> bool {
        self.section.same_in(other.section, C::CLASS)
    }
}

impl<S: Classified, C: PartClass> fmt::Debug for Part<'_, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.section.fmt_in(C::CLASS, f)
    }
}

/// Declares a section: per field, its doc, class (`restart` or `reload`), name, type, TOML key
/// (the name unless `as "key"`), then either a default (`= expr`) and a reader, a reader and a
/// `required` message, or a `derived` closure computing it from the fields above it.
///
/// A reader is `fn(&mut Ctx, Field) -> Option<T>` that records its own issues; a bad value
/// falls back to the default, so the checks after it still run and report their problems too.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $class:ident $field:ident : $ty:ty $(as $key:literal)? $(= $default:expr)? ,
                    $how:ident $via:expr $(, required $missing:literal)? ;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                pub $field: $ty,
            )*
        }

        impl $name {
            /// Reads the section, recording an issue for each problem; `None` when a required
            /// field is missing or bad.
            pub(crate) fn read(ctx: &mut $crate::config::reader::Ctx<'_>, mut s: $crate::config::reader::Section<'_>) -> Option<Self> {
                $(
                    let $field: Option<$ty> = $crate::config::section::section!(@value ctx, s, $crate::config::section::section!(@key $field $($key)?),
                        [$($default)?] [$($missing)?] $how $via);
                )*
                s.finish(ctx);
                Some($name { $($field: $field?,)* })
            }
        }

        impl $crate::config::section::Classified for $name {
            fn same_in(&self, other: &Self, class: $crate::config::section::Class) -> bool {
                $( ($crate::config::section::section!(@class $class) != class || self.$field == other.$field) && )* true
            }

            fn changed_in(&self, other: &Self, class: $crate::config::section::Class) -> Vec<&'static str> {
                let mut out = Vec::new();
                $(
                    if $crate::config::section::section!(@class $class) == class && self.$field != other.$field {
                        out.push($crate::config::section::section!(@key $field $($key)?));
                    }
                )*
                out
            }

            fn fmt_in(&self, class: $crate::config::section::Class, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let mut d = f.debug_struct(stringify!($name));
                $(
                    if $crate::config::section::section!(@class $class) == class {
                        d.field(stringify!($field), &self.$field);
                    }
                )*
                d.finish()
            }
        }

        $crate::config::section::section!(@default $name $($field [$($default)?])*);
    };

    (@key $field:ident) => { stringify!($field) };
    (@key $field:ident $key:literal) => { $key };

    (@class restart) => { $crate::config::section::Class::Restart };
    (@class reload) => { $crate::config::section::Class::Reload };

    (@value $ctx:ident, $s:ident, $key:expr, [$default:expr] [] read $read:expr) => {
        Some($s.with_default(&mut *$ctx, $key, $read, || $default))
    };
    (@value $ctx:ident, $s:ident, $key:expr, [] [$missing:literal] read $read:expr) => {
        $s.required(&mut *$ctx, $key, $read, $missing)
    };
    (@value $ctx:ident, $s:ident, $key:expr, [$($default:expr)?] [] derived $derive:expr) => {
        $s.derive($derive)
    };

    // `Default` only when every field has one: a section with a required key has no default.
    (@default $name:ident $($field:ident [$default:expr])*) => {
        impl Default for $name {
            fn default() -> Self {
                $name { $($field: $default,)* }
            }
        }
    };
    (@default $name:ident $($rest:tt)*) => {};
}

pub(crate) use section;
